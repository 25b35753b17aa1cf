"""Train DETR on a SLURM cluster through submitit: ``python run_with_submitit.py [main.py flags] [launcher flags]``.

One task per GPU (``--ngpus`` per node) or ``--ntasks_per_node`` CPU tasks (``--ngpus 0``); torch.distributed is set
up from the job (``env://``, master = the job's first host; NCCL on GPU, gloo on CPU). Training resumes by itself
from ``output_dir/checkpoint.pth`` when it exists, so a requeued job (time limit, preemption) continues where the
last complete epoch left it, and resubmitting the same command does the same. ``--dry_run`` prints the sbatch script
and the resolved arguments without submitting.
"""
import argparse
import copy
import os
import shlex
import sys
from pathlib import Path

import submitit
from submitit.slurm import slurm as submitit_slurm

import cli
from models.backbone import ensure_imagenet_weights, wants_imagenet_weights
from run import run
from util.config import ConfigError, parse_args_with_config
from util.distributed import job_port
from util.user_error import USER_ERRORS, UserError, debug_requested, one_line

REPO = Path(__file__).resolve().parent


def get_launcher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Submitit launcher for DETR", parents=[cli.get_args_parser()])
    slurm = parser.add_argument_group("SLURM")
    slurm.add_argument("--nodes", default=1, type=int, help="number of nodes")
    slurm.add_argument("--ngpus", default=8, type=int, help="GPUs per node; 0 runs CPU tasks")
    slurm.add_argument("--ntasks_per_node", default=None, type=int,
                       help="tasks per node (default: one per GPU; required sense for --ngpus 0, default 1)")
    slurm.add_argument("--cpus_per_task", default=10, type=int)
    slurm.add_argument("--mem_gb", default=None, type=int,
                       help="memory per node in GB (default: 40 per GPU, as the official launcher; for CPU-only "
                            "jobs no request, so SLURM's per-node default applies)")
    slurm.add_argument("--timeout", default=4320, type=int, help="time limit of one job in minutes")
    slurm.add_argument("--partition", default=None, type=str)
    slurm.add_argument("--account", default=None, type=str)
    slurm.add_argument("--qos", default=None, type=str)
    slurm.add_argument("--constraint", default=None, type=str)
    slurm.add_argument("--comment", default=None, type=str)
    slurm.add_argument("--job_dir", default=None, type=str,
                       help="where submitit writes scripts and per-task logs (default: OUTPUT_DIR/slurm)")
    slurm.add_argument("--max_requeues", default=3, type=int,
                       help="how many times a job that reached its time limit is requeued")
    slurm.add_argument("--signal_delay_s", default=120, type=int,
                       help="seconds before the time limit at which SLURM signals the job to requeue")
    slurm.add_argument("--dry_run", action="store_true", help="print the sbatch script and arguments; submit nothing")
    return parser


LAUNCHER_FLAGS = ("nodes", "ngpus", "ntasks_per_node", "cpus_per_task", "mem_gb", "timeout", "partition",
                  "account", "qos", "constraint", "comment", "job_dir", "max_requeues", "signal_delay_s", "dry_run")


class Trainer:
    """The submitted callable: sets up distributed variables from the job, resumes if a checkpoint exists, trains.

    ``checkpoint`` is submitit's hook on the requeue signal: it resubmits the same arguments, and the new job
    resumes from the last complete checkpoint (written atomically at the end of each epoch).
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self) -> dict:
        args = copy.deepcopy(self.args)
        self._set_distributed_env()
        args.auto_resume = not args.eval  # resume from OUTPUT_DIR/checkpoint.pth when a previous job wrote one
        try:
            return run(args)
        except USER_ERRORS as exc:  # the task's log ends in the one line; submitit records the job as failed
            if debug_requested(getattr(args, "debug", False)):
                raise
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            raise UserError(one_line(exc)) from None

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(type(self)(self.args))

    @staticmethod
    def _set_distributed_env() -> None:
        env = submitit.JobEnvironment()
        os.environ.update({
            "RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(job_port(str(env.job_id))),
        })
        print(f"submitit job {env.job_id}: task {env.global_rank}/{env.num_tasks} on {env.hostnames}", flush=True)


def tasks_per_node(args: argparse.Namespace) -> int:
    if args.ntasks_per_node is not None:
        return args.ntasks_per_node
    return args.ngpus if args.ngpus > 0 else 1


def slurm_parameters(args: argparse.Namespace) -> dict:
    """The job's SLURM parameters, in submitit's SlurmExecutor names, from the launcher flags."""
    ntasks = tasks_per_node(args)
    params = {
        "job_name": "detr", "nodes": args.nodes, "ntasks_per_node": ntasks, "cpus_per_task": args.cpus_per_task,
        "time": args.timeout,
        "signal_delay_s": args.signal_delay_s,
        # the repo on the path and one compute thread per allocated CPU in every task
        "setup": [f"export PYTHONPATH={REPO}:${{PYTHONPATH:-}}", f"export OMP_NUM_THREADS={args.cpus_per_task}"],
        "additional_parameters": {"requeue": True},  # whatever the cluster's JobRequeue default
    }
    if args.ngpus > 0:
        params["gpus_per_node"] = args.ngpus
    mem_gb = args.mem_gb if args.mem_gb is not None else 40 * args.ngpus if args.ngpus > 0 else None
    if mem_gb is not None:
        params["mem"] = f"{mem_gb}GB"
    for flag in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(args, flag) is not None:
            params[flag] = getattr(args, flag)
    return params


def sbatch_script(args: argparse.Namespace) -> str:
    """The sbatch script a submission writes (submitit's own template), without needing a cluster."""
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(args.job_dir)])
    return submitit_slurm._make_sbatch_string(command=command, folder=args.job_dir, **slurm_parameters(args))


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Check the launcher flags and fill in the defaults that depend on others."""
    if not args.output_dir:
        raise ValueError("--output_dir is required: checkpoints there are what a requeued job resumes from")
    args.output_dir = str(Path(args.output_dir).resolve())
    args.job_dir = str(Path(args.job_dir).resolve()) if args.job_dir else str(Path(args.output_dir) / "slurm")
    for flag in ("nodes", "cpus_per_task", "timeout"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.ngpus < 0 or tasks_per_node(args) < 1 or args.max_requeues < 0:
        raise ValueError("--ngpus and --max_requeues must be >= 0 and --ntasks_per_node >= 1")
    if args.ngpus > 0 and tasks_per_node(args) != args.ngpus:
        raise ValueError(f"--ntasks_per_node {args.ntasks_per_node} with --ngpus {args.ngpus}: GPU jobs run one task "
                         "per GPU (leave --ntasks_per_node out)")
    args.device = "cuda" if args.ngpus > 0 else "cpu"  # the job's nodes, not this login node, decide
    args.dist_url = "env://"
    return args


def main_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments main.py sees: everything but the launcher's own flags."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in LAUNCHER_FLAGS})


def submit(args: argparse.Namespace):
    trainer = Trainer(main_args(args))
    if args.dry_run:
        print(sbatch_script(args))
        print("# arguments for main.py:")
        for key, value in sorted(vars(trainer.args).items()):
            print(f"#   {key}: {value!r}")
        return None
    if wants_imagenet_weights(args):
        # Compute nodes often have no network: fetch the weights here, into the cache the job reads (torch.hub's,
        # under $TORCH_HOME or ~/.cache/torch, usually shared), or stop now with what to copy where.
        ensure_imagenet_weights(args.backbone)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=args.job_dir, max_num_timeout=args.max_requeues)
    executor.update_parameters(**slurm_parameters(args))
    job = executor.submit(trainer)
    print(f"Submitted job {job.job_id}; logs: {args.job_dir}/{job.job_id}_<task>_log.out|err; "
          f"outputs: {args.output_dir}", flush=True)
    return job


def main(argv: list[str] | None = None):
    parser = get_launcher_parser()
    try:
        args = resolve(parse_args_with_config(parser, argv))
        cli.check_args(args)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    try:
        return submit(args)
    except USER_ERRORS as exc:
        if debug_requested(args.debug):
            raise
        sys.exit(f"error: {one_line(exc)}")


if __name__ == "__main__":
    main(sys.argv[1:])
