"""slurm/train.sbatch against a real Slurm, started by these tests: munged, slurmctld and two slurmd as two nodes on
this machine (Debian's slurm-wlm and munge, which .ci/run installs), state in a temporary directory, stopped by
their pids at the end. A two-node job (one gloo rank per node) warned before its time limit stops with a
checkpoint, requeues itself once and ends with the train and val lines of an unbroken run; a job whose time limit
comes stops and requeues before the limit kills it. On CI these tests must run: there they fail where they would
skip."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from checkpoint import list_checkpoints, load_checkpoint
from conftest import ROOT, log_events, tiny_args, wait_for
from train_gpt2 import parse_config, train

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
FP32_NOISE = 1e-5  # 2 ranks against one process (see test_sharded.py)


def node_names() -> list[str]:
    """Two names of this machine that resolve to it (torchrun's rendezvous at the first node needs its name to)."""
    names = []  # Slurm reads a first NodeName=localhost as this machine's own name: the real name comes first
    for name in (socket.gethostname(), "localhost", "localhost.localdomain"):
        try:
            if socket.gethostbyname(name).startswith("127.") and name not in names:
                names.append(name)
        except OSError:
            continue
    return names[:2]


def missing() -> str:
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    if absent := [name for name in DAEMONS if shutil.which(name) is None]:
        return f"Slurm is not installed ({', '.join(absent)} not found: apt-get install slurm-wlm munge)"
    if len(node_names()) < 2:
        return "this machine has fewer than two names that resolve to it"
    return ""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


SLURM_CONF = """ClusterName=gpt2test
SlurmctldHost={controller}
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket,cred_expire=10
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=3600
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """A Slurm of two nodes on this machine, for the life of the test module."""

    def __init__(self, directory):
        self.dir, self.procs = directory, []
        self.names = node_names()
        ctld, *nodes = free_ports(3)
        (directory / "state").mkdir()
        (directory / "spool").mkdir()
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        node_lines = "\n".join(f"NodeName={name} NodeHostname={name} NodeAddr=127.0.0.1 Port={port} CPUs=2 "
                               f"RealMemory=4000" for name, port in zip(self.names, nodes))
        (directory / "slurm.conf").write_text(SLURM_CONF.format(controller=socket.gethostname().split(".")[0],
                                                                ctld_port=ctld, dir=directory, nodes=node_lines))
        self.env = {**os.environ, "SLURM_CONF": str(directory / "slurm.conf")}

    def boot(self):
        """The daemons, each a child of this process, until stop()."""
        directory, key = self.dir, self.dir / "munge.key"
        self.start(["munged", "--foreground", "--force", f"--socket={directory}/munge.socket",
                    f"--key-file={key}", f"--pid-file={directory}/munged.pid", f"--log-file={directory}/munged.log",
                    f"--seed-file={directory}/munged.seed"])
        assert wait_for(lambda: (directory / "munge.socket").exists(), 30), "munged did not start"
        self.start(["slurmctld", "-D", "-i"])
        for name in self.names:
            self.start(["slurmd", "-D", "-N", name])
        assert wait_for(lambda: self.idle_nodes() == 2, 60), (directory / "slurmctld.log").read_text()[-3000:]

    def start(self, command):
        self.procs.append(subprocess.Popen(command, env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def run(self, *command, check=True) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60).stdout

    def idle_nodes(self) -> int:
        out = self.run("sinfo", "-h", "-o", "%D %t", check=False)
        return sum(int(count) for count, state in (line.split() for line in out.splitlines()) if state == "idle")

    def submit(self, *args, cwd=ROOT, env=None) -> str:
        result = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def job(self, job_id) -> dict:
        """scontrol's fields of a job: JobState, Restarts, ..."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def stop(self):
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Slurm tests must run on CI: {reason}")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.boot()
        yield cluster
    finally:
        cluster.stop()


STEPS = 12


def job_args(shards, run_dir):
    """The tiny run of the tests, 12 steps, validation every 4, no periodic checkpoint: only the stop's and the
    end's."""
    return tiny_args(shards, run_dir, "--max-steps", str(STEPS), "--eval-interval", "4", "--checkpoint-interval", "0",
                     "--checkpoint-minutes", "0", "--max-lr", "2e-3")


def sbatch_args(tmp_path, *extra):
    """Two nodes, one CPU rank each; sbatch's flags over the script's GPU cluster defaults."""
    return ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out", *extra,
            str(ROOT / "slurm" / "train.sbatch")]


def job_env():
    return {"GPT2_PYTHON": sys.executable, "GPT2_MASTER_PORT": str(free_ports(1)[0]), "OMP_NUM_THREADS": "1"}


def train_lines(run_dir):
    path = run_dir / "log.txt"
    return len(re.findall(r"(?m)^\d+ train ", path.read_text())) if path.exists() else 0


def test_a_two_node_job_warned_before_its_limit_requeues_once_and_equals_an_unbroken_run(cluster, shards, tmp_path):
    one, run = tmp_path / "one", tmp_path / "run"
    train(parse_config(job_args(shards, one)))
    job = cluster.submit(*sbatch_args(tmp_path), *job_args(shards, run), env=job_env())
    assert wait_for(lambda: train_lines(run) >= 3 or cluster.job(job).get("JobState") in ("FAILED", "COMPLETED"), 240)
    cluster.run("scancel", "--batch", "--signal=USR1", job)  # what --signal=B:USR1@N sends before the limit
    assert wait_for(lambda: cluster.job(job).get("JobState") == "COMPLETED", 300), cluster.job(job)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert cluster.job(job)["Restarts"] == "1" and output.count("requeued: it resumes from its checkpoint") == 1, \
        output[-3000:]
    assert "(start 2): finished" in output and 'train_gpt2.py", line' not in output  # torchrun's traceback is its own
    log = (run / "log.txt").read_text()
    stopped = re.findall(r"(?m)^# stopped by SIGTERM at step (\d+); checkpoint (\S+);", log)
    assert len(stopped) == 1 and 3 <= int(stopped[0][0]) < STEPS, log[-3000:]
    assert f"Slurm's requeue 1 of job {job}" in log and f"resumed from {stopped[0][1]}" in log
    ours, unbroken = log_events(run / "log.txt"), log_events(one / "log.txt")
    assert sorted(ours) == list(range(STEPS)) and max(abs(ours[s] - unbroken[s]) for s in ours) <= FP32_NOISE
    assert log_events(run / "log.txt", "val") == log_events(one / "log.txt", "val")
    final = load_checkpoint(run / f"ckpt_{STEPS:06d}.pt")
    assert final["step"] == STEPS and len(final["rng"]) == 2


def test_a_job_whose_time_limit_comes_stops_with_a_checkpoint_and_requeues_before_it(cluster, shards, tmp_path):
    """--time=1 (a minute) and the warning 45 s before it, from Slurm itself: the training stops with a checkpoint
    and the job is back in the queue, not ended by the limit."""
    run = tmp_path / "run"
    args = tiny_args(shards, run, "--max-steps", "100000", "--eval-interval", "0", "--checkpoint-interval", "0",
                     "--checkpoint-minutes", "0")
    job = cluster.submit(*sbatch_args(tmp_path, "--time=1", "--signal=B:USR1@45"), *args, env=job_env())
    try:
        assert wait_for(lambda: int(cluster.job(job).get("Restarts", "0")) >= 1 or
                        cluster.job(job).get("JobState") in ("TIMEOUT", "FAILED", "COMPLETED"), 240), \
            cluster.job(job)
        state = cluster.job(job)
    finally:
        cluster.run("scancel", job, check=False)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert state["Restarts"] == "1" and state["JobState"] != "TIMEOUT", (state, output[-3000:])
    assert "the time limit is near" in output and "requeued: it resumes from its checkpoint" in output
    stopped = re.findall(r"(?m)^# stopped by SIGTERM at step (\d+); checkpoint (\S+);", (run / "log.txt").read_text())
    assert len(stopped) >= 1 and load_checkpoint(stopped[0][1])["step"] == int(stopped[0][0])
    assert list_checkpoints(run)
