"""One node's share of a multi-node run under Slurm: builds this node's `accelerate launch` or `torchrun` command from
Slurm's variables and runs it in place of this process, so that the signals Slurm sends reach the launcher itself.
launch.sbatch runs it once per node:

    srun --ntasks-per-node=1 python scripts/slurm/launch.py --launcher=accelerate -- train.py --config=... --workdir=...
    python scripts/slurm/launch.py --dry_run -- train.py ...     # print the command instead of running it

Read from the environment of each task:
    SLURM_NNODES (or SLURM_JOB_NUM_NODES)  number of nodes
    SLURM_NODEID                           this node's rank, 0 .. nodes - 1
    SLURM_JOB_NODELIST                     its first host runs rank 0: the main process's address
    SLURM_GPUS_ON_NODE                     processes per node (or --gpus_per_node)
    SLURM_JOB_ID                           the rendezvous port is derived from it (or --port), so that two jobs
                                           sharing a node do not collide
    SLURM_NTASKS                           must equal the number of nodes: the launcher starts one process per GPU
"""
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

from libs.cli import parse_flags, run  # noqa: E402
from libs.errors import UserError  # noqa: E402

LAUNCHERS = ('accelerate', 'torchrun')
PORT_BASE, PORT_SPAN = 20000, 10000     # job-derived ports stay below Linux's ephemeral range (32768 and up)

flags.DEFINE_enum('launcher', 'accelerate', LAUNCHERS, 'Which launcher starts the processes of each node.')
flags.DEFINE_integer('gpus_per_node', 0, 'Processes per node (default: SLURM_GPUS_ON_NODE).')
flags.DEFINE_integer('port', 0, f'Rendezvous port (default: {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}).')
flags.DEFINE_bool('dry_run', False, 'Print the command instead of running it.')
FLAGS = flags.FLAGS


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-004,007],cpu01' -> 'gpu003'; 'r[1-2]-n[01-08]' -> 'r1-n01'."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first comma outside brackets ends the first host expression
        depth += {'[': 1, ']': -1}.get(char, 0)
        if char == ',' and depth == 0:
            end = i
            break
    host = re.sub(r'\[([^\]]*)\]', lambda m: re.split('[,-]', m.group(1))[0], nodelist[:end]).strip()
    if not host or '[' in host or ']' in host:
        raise UserError(f'cannot read the first host of SLURM_JOB_NODELIST={nodelist!r}')
    return host


def env_int(env: dict, *names: str) -> int:
    """The first of the variables ``names`` that is set, as an integer."""
    for name in names:
        if env.get(name):
            if not env[name].isdigit():
                raise UserError(f'{name}={env[name]!r} is not a number')
            return int(env[name])
    raise UserError(f'{" or ".join(names)} is not set: run this inside a Slurm job step (srun), one task per node')


def main_host(env: dict) -> str:
    if not env.get('SLURM_JOB_NODELIST'):
        raise UserError('SLURM_JOB_NODELIST is not set: run this inside a Slurm job step (srun), one task per node')
    return first_host(env['SLURM_JOB_NODELIST'])


def launch_command(env: dict, launcher: str, program: list, gpus_per_node: int = 0, port: int = 0) -> list:
    """This node's launch command for ``program`` (the script and its arguments)."""
    if not program:
        raise UserError('no program to launch: put it after --, e.g. -- train.py --config=configs/X.py')
    nodes = env_int(env, 'SLURM_NNODES', 'SLURM_JOB_NUM_NODES')
    node_rank = env_int(env, 'SLURM_NODEID')
    tasks = env_int(env, 'SLURM_NTASKS') if env.get('SLURM_NTASKS') else nodes
    if tasks != nodes:
        raise UserError(f'{tasks} Slurm tasks on {nodes} nodes: run one task per node (#SBATCH --ntasks-per-node=1); '
                        f'the launcher starts one process per GPU itself')
    gpus = gpus_per_node or env_int(env, 'SLURM_GPUS_ON_NODE')
    port = port or PORT_BASE + env_int(env, 'SLURM_JOB_ID') % PORT_SPAN
    if launcher == 'accelerate':
        command = ['accelerate', 'launch', '--num_machines', str(nodes), '--num_processes', str(nodes * gpus),
                   '--main_process_port', str(port)]
        if nodes * gpus > 1:
            command.append('--multi_gpu')
        if nodes > 1:
            command += ['--machine_rank', str(node_rank), '--main_process_ip', main_host(env)]
    elif nodes == 1:
        command = ['torchrun', '--standalone', '--nproc_per_node', str(gpus)]
    else:
        command = ['torchrun', '--nnodes', str(nodes), '--node_rank', str(node_rank), '--nproc_per_node', str(gpus),
                   '--master_addr', main_host(env), '--master_port', str(port)]
    return command + list(program)


def main(argv):
    command = launch_command(dict(os.environ), FLAGS.launcher, argv[1:], FLAGS.gpus_per_node, FLAGS.port)
    if FLAGS.dry_run:
        print(shlex.join(command))
        return
    print(f'node {os.environ["SLURM_NODEID"]}: {shlex.join(command)}', flush=True)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        raise UserError(f'{command[0]} is not on PATH: activate the environment of the suite first') from None


if __name__ == '__main__':
    app.run(lambda argv: run(main, argv), flags_parser=parse_flags)
