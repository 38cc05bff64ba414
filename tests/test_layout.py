"""The package layout of libs/: no import circles, one home per concept, the backbone protocol declared by every
backbone, and the release's import paths kept."""
import ast
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = os.path.join(ROOT, 'libs')


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def import_graph() -> dict:
    """{module: set of libs modules it imports}, counting imports anywhere in the file (inside functions too)."""
    modules = {}
    for dirpath, _, files in os.walk(LIBS):
        for name in files:
            if name.endswith('.py'):
                modules[module_name(os.path.join(dirpath, name))] = os.path.join(dirpath, name)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('libs'):
                for alias in node.names:  # `from libs.x import y`: y may be a submodule
                    target = f'{node.module}.{alias.name}'
                    edges.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith('libs'))
        graph[module] = {e for e in edges if e in modules and e != module}
    return graph


def cycles(graph: dict) -> list:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_libs_has_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40  # every module was read
    assert cycles(graph) == []


# The floors of docs/ARCHITECTURE.md: a package imports only from its own floor or below.
FLOORS = {'libs.errors': 0, 'libs.fileio': 0, 'libs.images': 0, 'libs.rng': 0, 'libs.cli': 0, 'libs.config': 0,
          'libs.forked_script': 0,
          'libs.nets': 1, 'libs.data': 1, 'libs.uvit': 1, 'libs.uvit_t2i': 1, 'libs.dit': 1,
          'libs.diffusion': 2, 'libs.latent': 2,
          'libs.metrics': 3, 'libs.evaluation': 4, 'libs.training': 5, 'libs.entrypoints': 6}


def package(module: str) -> str:
    return '.'.join(module.split('.')[:2])


def test_every_import_goes_to_the_same_floor_or_below():
    graph = import_graph()
    assert {package(m) for m in graph} - {'libs'} == set(FLOORS)  # every package has its floor
    for module, targets in graph.items():
        for target in targets:
            if package(module) != 'libs':
                assert FLOORS[package(target)] <= FLOORS[package(module)], (module, target)


def test_the_foundation_modules_import_nothing_above_them():
    graph = import_graph()
    for module in ('libs.errors', 'libs.fileio', 'libs.images', 'libs.rng', 'libs.nets.protocol'):
        assert graph[module] <= {'libs.errors'}, (module, graph[module])
    # backbones know nothing about diffusion, data or training
    for module in graph:
        if module.startswith('libs.nets'):
            assert not any(e.startswith(('libs.diffusion', 'libs.data', 'libs.training', 'libs.evaluation'))
                           for e in graph[module]), (module, graph[module])


def test_the_releases_import_paths_still_work():
    from libs.nets.uvit import UViT as PackagedUViT
    from libs.nets.uvit_t2i import UViT as PackagedT2I
    from libs.uvit import UViT
    from libs.uvit_t2i import UViT as T2I
    assert UViT is PackagedUViT and T2I is PackagedT2I


@pytest.mark.parametrize('cfg,condition,classifies', [
    (dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2), 'none', False),
    (dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2, num_classes=11),
     'labels', False),
    (dict(name='uvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2, clf_classes=10),
     'none', True),
    (dict(name='uvit_t2i', img_size=8, patch_size=2, in_chans=4, embed_dim=16, depth=2, num_heads=2, clip_dim=8,
          num_clip_token=5), 'text', False),
    (dict(name='genvit', img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2), 'none', True),
])
def test_every_backbone_declares_the_protocol(cfg, condition, classifies):
    from libs.nets import NNETS, build_nnet
    from libs.nets.protocol import OUTPUT_IMAGE, backbone_classifies, backbone_condition, backbone_output
    assert cfg['name'] in NNETS
    with torch.device('meta'):
        nnet = build_nnet(cfg)
    assert backbone_condition(nnet) == condition and backbone_classifies(nnet) is classifies
    assert backbone_output(nnet) == OUTPUT_IMAGE
    assert tuple(nnet.input_shape) == (cfg['in_chans'], cfg['img_size'], cfg['img_size'])


def test_a_backbone_without_the_protocol_is_one_line_for_the_framework():
    from libs.diffusion.gaussian import GaussianFramework
    from libs.diffusion.schedules import VPSDE
    from libs.errors import UserError

    class Bare(torch.nn.Module):
        pass

    class Logits(torch.nn.Module):
        output = 'logits'

    with pytest.raises(UserError, match="Bare does not declare 'output'"):
        GaussianFramework(VPSDE()).check_backbone(Bare())
    with pytest.raises(UserError, match="declares 'logits'"):
        GaussianFramework(VPSDE()).check_backbone(Logits())


# Behaviour that depends on a framework, backbone, schedule, space or conditioning lives behind its interface: outside
# the package that owns them, no comparison of their names and no isinstance of their classes.
INTERFACE_PACKAGES = ('libs.diffusion', 'libs.nets', 'libs.latent', 'libs.data')
INTERFACE_OBJECTS = ('framework', 'nnet', 'backbone', 'schedule', 'space', 'conditioning')


def dotted(node) -> str:
    """'a.b.c' of a Name or Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f'{inner}.{node.attr}' if inner else ''
    return ''


def interface_checks(source: str, module: str) -> list:
    """'line: code' of each check in ``source`` (of ``module``, dotted) that asks which framework, backbone, ... it
    holds: ``<...framework...>.name`` in a comparison, or isinstance / issubclass of a class imported from another
    libs package that owns such objects."""
    tree = ast.parse(source)
    imported = {}  # local name -> the libs module it comes from
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('libs'):
            imported.update({alias.asname or alias.name: node.module for alias in node.names})
        elif isinstance(node, ast.Import):
            imported.update({alias.asname or alias.name: alias.name for alias in node.names
                             if alias.name.startswith('libs')})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                parts = dotted(side).split('.')
                if len(parts) > 1 and parts[-1] == 'name' and any(o in parts[-2].lower() for o in INTERFACE_OBJECTS):
                    found.append(f'{node.lineno}: {ast.unparse(node)}')
        elif isinstance(node, ast.Call) and dotted(node.func) in ('isinstance', 'issubclass') and len(node.args) == 2:
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            for kind in kinds:
                parts = dotted(kind).split('.')
                owner = imported.get(parts[0], '')
                owner = '.'.join([owner, *parts[1:-1]]) if owner else ''
                if package(owner) in INTERFACE_PACKAGES and package(owner) != package(module):
                    found.append(f'{node.lineno}: {ast.unparse(node)}')
    return found


def test_the_scan_for_interface_checks_finds_them_and_only_them():
    source = '\n'.join([
        'from libs.diffusion.schedules import DiscreteSchedule',
        'from libs.diffusion import conditioning as c',
        'from libs.errors import UserError',
        "if run.framework.name == 'ctmc': pass",
        "if 'uvit' != config.nnet.name: pass",
        'if isinstance(schedule, DiscreteSchedule): pass',
        'if isinstance(cond, (int, c.ClassLabels)): pass',
        'if isinstance(exc, UserError) or isinstance(x, torch.Tensor) or dataset.name == "x": pass',
        "if self.rate.name != 'gaussian' or name == 'framework': pass",
    ])
    assert [f.split(':')[0] for f in interface_checks(source, 'libs.evaluation.likelihood')] == ['4', '5', '6', '7']
    assert [f.split(':')[0] for f in interface_checks(source, 'libs.diffusion.gaussian')] == ['4', '5']


def test_no_framework_backbone_or_space_checks_outside_their_packages():
    paths = [os.path.join(d, n) for top in ('libs', 'scripts') for d, _, names in os.walk(os.path.join(ROOT, top))
             for n in names if n.endswith('.py')]
    paths += [os.path.join(ROOT, n) for n in os.listdir(ROOT) if n.endswith('.py')]
    assert len(paths) > 60
    found = [f'{os.path.relpath(path, ROOT)}:{check}' for path in sorted(paths)
             for check in interface_checks(open(path).read(), module_name(path))]
    assert found == [], found
