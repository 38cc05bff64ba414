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
