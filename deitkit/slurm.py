"""`deitkit slurm`: submit a deitkit command to SLURM through submitit (optional dependency).

Each SLURM task becomes one torch.distributed process: the environment that torchrun would
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is derived from SLURM's, then the
ordinary CLI runs, so the training code is the same single code path.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

try:  # optional: `pip install 'deitkit[slurm]'`
    import submitit
except ImportError:
    submitit = None


class SlurmError(RuntimeError):
    """submitit is missing or the submission is malformed."""


def torch_env(global_rank: int, local_rank: int, world: int, hostnames: list[str],
              port: int) -> dict[str, str]:
    """The variables torch.distributed reads, for one task of a SLURM job."""
    return {"RANK": str(global_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": hostnames[0], "MASTER_PORT": str(port)}


class SlurmTask:
    """The picklable callable submitit runs in every task."""

    def __init__(self, entry: Callable[[list[str]], int], argv: list[str], port: int):
        # entry: the CLI's main, handed in by the CLI (pickled by reference)
        self.entry, self.argv, self.port = entry, argv, port

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        os.environ.update(torch_env(env.global_rank, env.local_rank, env.num_tasks,
                                    env.hostnames, self.port))
        return self.entry(self.argv)


def submit(entry: Callable[[list[str]], int], argv: list[str], *, folder: str, nodes: int = 1,
           gpus_per_node: int = 8,
           cpus_per_task: int = 10, timeout_min: int = 60 * 24, partition: Optional[str] = None,
           port: int = 29500, job_name: str = "deitkit", cluster: Optional[str] = None):
    """Submit `entry(argv)` (the CLI: `deitkit <argv>`) as a SLURM job of nodes x gpus_per_node
    tasks; return the job.

    cluster="local" runs the tasks as local processes instead (submitit's local executor), to
    try a submission on a machine without SLURM.
    """
    if submitit is None:
        raise SlurmError("`deitkit slurm` needs submitit: pip install 'deitkit[slurm]' "
                           "(or use the sbatch script in docs/distributed.md)")
    if "--out" not in argv and not any(a.startswith("out=") for a in argv):
        raise SlurmError("give the run folder with --out (all tasks must agree on it)")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    tasks = max(1, gpus_per_node)
    params = dict(nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus_per_node,
                  cpus_per_task=cpus_per_task, timeout_min=timeout_min, name=job_name)
    if cluster == "local":
        params.pop("nodes")
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor.submit(SlurmTask(entry, list(argv), port))
