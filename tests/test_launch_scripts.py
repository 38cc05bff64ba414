"""scripts/slurm/: the launch command each node runs, built from Slurm's variables (1 and 2 nodes, accelerate and
torchrun), and launch.sbatch's time-limit path (SIGTERM to the step, then requeue) with stand-ins for srun, scancel
and scontrol."""
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from libs.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, 'scripts', 'slurm')
PROGRAM = ['train.py', '--config=configs/imagenet64_uvit_mid.py', '--workdir=/shared/runs/in64']


def load_launch():
    spec = importlib.util.spec_from_file_location('slurm_launch', os.path.join(SLURM, 'launch.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slurm_env(nodes: int, node_id: int) -> dict:
    return {'SLURM_NNODES': str(nodes), 'SLURM_NODEID': str(node_id), 'SLURM_NTASKS': str(nodes),
            'SLURM_JOB_NODELIST': 'gpu[017-018],gpu031' if nodes > 1 else 'gpu017', 'SLURM_GPUS_ON_NODE': '8',
            'SLURM_JOB_ID': '4213377'}


def dry_run(env: dict, launcher: str):
    """The printed command of the real script, run with only ``env`` as Slurm's variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    result = subprocess.run([sys.executable, os.path.join(SLURM, 'launch.py'), f'--launcher={launcher}', '--dry_run',
                             '--', *PROGRAM], capture_output=True, text=True, env={**clean, **env}, timeout=60)
    return result, shlex.split(result.stdout)


def options(command: list) -> dict:
    """'--flag value' pairs of a launcher command (up to the program), and bare flags as True."""
    found, i = {}, 0
    while i < len(command) and command[i] != PROGRAM[0]:
        if command[i].startswith('--'):
            has_value = i + 1 < len(command) and not command[i + 1].startswith('--') and command[i + 1] != PROGRAM[0]
            found[command[i]] = command[i + 1] if has_value else True
            i += 2 if has_value else 1
        else:
            i += 1
    return found


def test_accelerate_commands_for_one_and_two_nodes():
    result, one = dry_run(slurm_env(1, 0), 'accelerate')
    assert result.returncode == 0, result.stderr
    assert one[:2] == ['accelerate', 'launch'] and one[-3:] == PROGRAM
    assert options(one) == {'--num_machines': '1', '--num_processes': '8', '--main_process_port': str(20000 + 3377),
                            '--multi_gpu': True}
    for node in (0, 1):
        result, two = dry_run(slurm_env(2, node), 'accelerate')
        assert result.returncode == 0, result.stderr
        assert two[-3:] == PROGRAM
        assert options(two) == {'--num_machines': '2', '--num_processes': '16', '--main_process_port': '23377',
                                '--multi_gpu': True, '--machine_rank': str(node), '--main_process_ip': 'gpu017'}


def test_torchrun_commands_for_one_and_two_nodes():
    result, one = dry_run(slurm_env(1, 0), 'torchrun')
    assert result.returncode == 0, result.stderr
    assert one[0] == 'torchrun' and options(one) == {'--standalone': True, '--nproc_per_node': '8'}
    assert one[-3:] == PROGRAM
    result, two = dry_run(slurm_env(2, 1), 'torchrun')
    assert result.returncode == 0, result.stderr
    assert options(two) == {'--nnodes': '2', '--node_rank': '1', '--nproc_per_node': '8', '--master_addr': 'gpu017',
                            '--master_port': '23377'}
    assert two[-3:] == PROGRAM


def test_bad_slurm_settings_are_one_line():
    for env, message in (({}, 'SLURM_NNODES or SLURM_JOB_NUM_NODES is not set'),
                         ({**slurm_env(2, 0), 'SLURM_NTASKS': '16'}, 'run one task per node'),
                         ({**slurm_env(1, 0), 'SLURM_GPUS_ON_NODE': ''}, 'SLURM_GPUS_ON_NODE is not set')):
        result, _ = dry_run(env, 'accelerate')
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_the_launcher_does_not_import_torch():
    """launch.py runs on every node before the launcher does: its dry run, through libs.cli.run like every script,
    imports no torch (seconds of a busy node's CPU, and nothing to close without it)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    code = ('import runpy, sys\n'
            'sys.argv = sys.argv[1:]\n'
            'try:\n'
            '    runpy.run_path(sys.argv[0], run_name="__main__")\n'
            'finally:\n'
            '    print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"), file=sys.stderr)\n')
    result = subprocess.run([sys.executable, '-c', code, os.path.join(SLURM, 'launch.py'), '--launcher=torchrun',
                             '--dry_run', '--', *PROGRAM], capture_output=True, text=True,
                            env={**clean, **slurm_env(1, 0)}, timeout=60)
    assert result.returncode == 0 and shlex.split(result.stdout)[-3:] == PROGRAM, result.stderr
    assert result.stderr.splitlines()[-1] == '[]'


def test_the_first_host_of_a_node_list():
    launch = load_launch()
    assert launch.first_host('node7') == 'node7'
    assert launch.first_host('gpu[003-004,007],cpu01') == 'gpu003'
    assert launch.first_host('gpu[010,002]') == 'gpu010'  # Slurm keeps the order it was given
    assert launch.first_host('a01,b[1-4]') == 'a01'
    assert launch.first_host('rack[2-3]-n[08-09]') == 'rack2-n08'
    with pytest.raises(UserError, match='first host'):
        launch.first_host('gpu[003')


FAKE_SRUN = '''#!/bin/bash
printf '%s\\n' "$@" > "$LOG/srun.args"
trap 'echo SIGTERM >> "$LOG/srun.events"; sleep "$SAVE_S"; exit 0' TERM   # the training saves and exits 0
echo $$ > "$LOG/srun.pid"
while [ ! -e "$LOG/finish" ]; do sleep 0.02; done
exit 3
'''
FAKE_SCANCEL = '''#!/bin/bash
echo "$@" >> "$LOG/scancel.args"
step=$(cat "$LOG/srun.pid")
kill -TERM "$step"
if [ "$SAVE_S" = 0 ]; then  # a quick save: the step has ended before the job script goes on
    while kill -0 "$step" 2>/dev/null; do sleep 0.01; done
fi
'''
FAKE_SCONTROL = '''#!/bin/bash
echo "$@" >> "$LOG/scontrol.args"
'''


def start_job(tmp_path, launcher: str, save_s: float = 0):
    """launch.sbatch under bash with stand-ins for srun, scancel and scontrol; waits until the step runs. After a
    SIGTERM the step saves for ``save_s`` seconds, or at once (0: it has ended when scancel returns)."""
    bin_dir, log = tmp_path / 'bin', tmp_path / 'log'
    bin_dir.mkdir(parents=True)
    log.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scancel', FAKE_SCANCEL), ('scontrol', FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', LOG=str(log), SLURM_JOB_ID='77',
               SLURM_SUBMIT_DIR=ROOT, LAUNCHER=launcher, SAVE_S=str(save_s))
    job = subprocess.Popen(['bash', os.path.join(SLURM, 'launch.sbatch'), *PROGRAM], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (log / 'srun.pid').exists() and time.time() < deadline:
        time.sleep(0.02)
    assert (log / 'srun.pid').exists(), 'the job script did not start its step'
    return job, log


def test_the_job_script_requeues_at_the_time_limit_and_not_at_the_end(tmp_path):
    assert subprocess.run(['bash', '-n', os.path.join(SLURM, 'launch.sbatch')]).returncode == 0
    header = open(os.path.join(SLURM, 'launch.sbatch')).read()
    for line in ('#SBATCH --ntasks-per-node=1', '#SBATCH --signal=B:USR1@120', '#SBATCH --requeue'):
        assert line in header

    for save_s in (0, 0.5):  # the step's status after the time limit, whether it ended before the trap returned
        job, log = start_job(tmp_path / f'limit{save_s}', 'torchrun', save_s)
        job.send_signal(signal.SIGUSR1)  # what Slurm sends 120 s before the time limit
        assert job.wait(timeout=30) == 0, job.stdout.read()
        assert (log / 'scancel.args').read_text().split() == ['--signal=TERM', '77']
        assert (log / 'srun.events').read_text().split() == ['SIGTERM']
        assert (log / 'scontrol.args').read_text().split() == ['requeue', '77']
        args = (log / 'srun.args').read_text().splitlines()
        assert args[:3] == ['--ntasks-per-node=1', 'python', 'scripts/slurm/launch.py']
        assert args[3:] == ['--launcher=torchrun', '--', *PROGRAM]

    job, log = start_job(tmp_path / 'end', 'accelerate')
    (log / 'finish').touch()  # the step ends by itself (here with status 3)
    assert job.wait(timeout=30) == 3
    assert not (log / 'scontrol.args').exists() and not (log / 'scancel.args').exists()
    assert '--launcher=accelerate' in (log / 'srun.args').read_text().splitlines()
