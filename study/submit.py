"""Submit a study to a Ray cluster: ``python study/submit.py --address http://HEAD:8265 --space hardneg.yaml``.

The study runs on the cluster as a Ray job (Jobs API, ``JobSubmissionClient``): this project is the job's
``working_dir`` and the entrypoint is ``python study/run.py --address auto <study options>``, the same command as
``make study``. Follow a job with ``--follow``; look at one later with ``--status JOB``, ``--logs JOB``, ``--stop JOB``.

Authentication: Ray 2.60 enables token auth on a cluster whose nodes have a token. The token is read like Ray reads
it: ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.

Storage: every node of a multi-node cluster writes to the study's storage, so it must be shared: ``s3://``, ``gs://``,
or a path on a shared filesystem (``file:///nfs/studies`` or ``--shared-storage``). A plain path is refused on a
cluster with more than one node. Refusals exit with status 2 before anything is submitted.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import shlex
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python study/submit.py` puts study/ on sys.path, not the project root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.ray_jobs import Cluster, SubmitError, check_storage, normalise_address  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: gitignore-style patterns (relative to the project root) left out of the uploaded working_dir; Ray also applies
#: the project's .gitignore.
EXCLUDES = ["/.venv/", "/runs/", "/.git/", "/data/", "/build/", "/dist/", "/.pytest_cache/", "__pycache__/",
            "*.pyc", "*.egg-info/", "/bench/results/"]
#: study/run.py options that submit sets itself (the job joins its cluster with --address auto); every other
#: option of study/run.py's parser is forwarded as it is, parsed and checked by study/run.py's own code
OWN_OPTIONS = ("--space", "--storage", "--address", "--dry-run", "--help")
#: Seconds Ray's job supervisor waits after SIGTERM (--stop) before SIGKILL: Ray's default, 3 s, cuts a study off
#: before Tune has stopped its trials and the study has written its files.
STOP_WAIT_S = 180
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study/submit.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    c = p.add_argument_group("cluster")
    c.add_argument("--address", default=None,
                   help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    c.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the dashboard to answer")
    j = p.add_argument_group("jobs")
    j.add_argument("--follow", action="store_true",
                   help="stream the job's logs until it ends; the exit status is the job's (0 = succeeded)")
    j.add_argument("--status", metavar="JOB", help="print a job's status and exit")
    j.add_argument("--logs", metavar="JOB", help="print a job's logs (with --follow: stream them until it ends)")
    j.add_argument("--stop", metavar="JOB", help="stop a job (the study is interrupted; continue with --resume)")
    j.add_argument("--job-id", default=None, help="submission id of the new job (default: Ray chooses raysubmit_...)")
    j.add_argument("--dry-run", action="store_true",
                   help="print the entrypoint and runtime environment, contact nothing, submit nothing")
    r = p.add_argument_group("runtime environment")
    r.add_argument("--pip", action="store_true",
                   help="install the project's requirements (setup.cfg install_requires, without ray) into the "
                        "job's runtime environment; by default the cluster's image must have them (the cluster/ "
                        "templates install the project on every node)")
    r.add_argument("--python", default="python", help="the interpreter on the cluster that runs study/run.py")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the job (e.g. AWS_DEFAULT_REGION=eu-west-1)")
    s = p.add_argument_group("study (forwarded to study/run.py)")
    s.add_argument("--space", default="hardneg", help="space file: a name in configs/ or a path inside the project")
    s.add_argument("--storage", default=None,
                   help="where the study is written, as the cluster sees it: s3://..., gs://..., file:///shared/path,"
                        " or an absolute path (a plain path only on a one-node cluster, or with --shared-storage)")
    s.add_argument("--shared-storage", action="store_true",
                   help="--storage is a path on a filesystem every node mounts at the same place (NFS, Lustre...)")
    for action in forwarded_actions():
        s._add_action(action)  # the action itself (as argparse's parents= does): same type, default and help
    return p


def forwarded_actions() -> list[argparse.Action]:
    """study/run.py's options that a job forwards (all but :data:`OWN_OPTIONS`), from its own parser (study/cli.py)."""
    from study.cli import build_parser as run_parser

    return [a for a in run_parser()._actions if a.option_strings and not set(a.option_strings) & set(OWN_OPTIONS)]


# --- the job ---------------------------------------------------------------------------------------------------------
def requirements(setup_cfg: Path = ROOT / "setup.cfg") -> list[str]:
    """setup.cfg's install_requires without ray: the cluster runs Ray already, and the job must use that Ray."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = [line.strip() for line in cfg.get("options", "install_requires", fallback="").splitlines()]
    return [line for line in lines if line and not line.split("[")[0].split("=")[0].split("<")[0].split(">")[0]
            .strip().lower() == "ray"]


def space_argument(space: str) -> str:
    """The --space value as the job sees it: a configs/ name, or a path relative to the project (the working_dir)."""
    from study.params import SpaceError
    from study.space import load_space

    try:
        loaded = load_space(space)
    except SpaceError as err:
        raise SubmitError(str(err)) from None
    source = Path(loaded.source).resolve()
    from moco.catalog import CONFIG_DIR

    if source.is_relative_to(CONFIG_DIR):  # a shipped file: by the checkout's configs/ link, as the templates name it
        return f"configs/{source.relative_to(CONFIG_DIR).as_posix()}"
    try:
        return str(source.relative_to(ROOT))
    except ValueError:
        raise SubmitError(f"--space {space}: {source} is outside the project ({ROOT}), so it would not be uploaded "
                          "with the job; copy it into configs/ (or anywhere in the project)") from None


def storage_argument(storage: str | None, shared: bool) -> tuple[str, bool]:
    """(the --storage value for study/run.py, whether it is a plain local path that may not be shared)."""
    if not storage:
        raise SubmitError("--storage is required when submitting to a cluster: s3://bucket/studies, "
                          "gs://bucket/studies, or an absolute path on a shared filesystem (file:///nfs/studies, "
                          "or /nfs/studies --shared-storage); a path on a one-node cluster works too")
    if storage.startswith("file://"):
        path = storage[len("file://"):]
        if not path.startswith("/"):
            raise SubmitError(f"--storage {storage}: a file:// URI needs an absolute path (file:///nfs/studies)")
        return path.rstrip("/") or "/", False
    if "://" in storage:
        return storage.rstrip("/"), False
    if not storage.startswith("/"):
        raise SubmitError(f"--storage {storage}: use an absolute path; the job runs in a temporary copy of the "
                          "project on the head node, which Ray deletes, so a relative path would be lost")
    return storage.rstrip("/") or "/", not shared


def forwarded(args: argparse.Namespace) -> list[str]:
    """The study options given, as study/run.py's command line (options left at their default are left out)."""
    parts: list[str] = []
    for action in forwarded_actions():
        value, option = getattr(args, action.dest), action.option_strings[-1]
        if value == action.default:
            continue
        if action.nargs == 0:  # a flag
            parts.append(option)
        elif isinstance(value, list):  # a repeatable option (--set)
            parts += [x for item in value for x in (option, str(item))]
        else:  # a whole float as the user wrote it (60, not 60.0)
            parts += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    return parts


def check_study(args: argparse.Namespace, storage: str) -> None:
    """study/run.py's own checks of the study options (``check_args``: the space, the command line, the name), here,
    before anything is contacted: a refusal says what study/run.py would say on the cluster."""
    from study import cli

    try:
        cli.check_args(cli.build_parser().parse_args(["--space", args.space, "--storage", storage, *forwarded(args)]))
    except cli.CHECK_ERRORS as err:
        raise SubmitError(str(err)) from None


def entrypoint(args: argparse.Namespace, space: str, storage: str) -> str:
    return shlex.join([args.python, "study/run.py", "--address", "auto", "--space", space, "--storage", storage,
                       *forwarded(args)])


def runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {"working_dir": str(ROOT), "excludes": list(EXCLUDES)}
    if args.pip:
        env["pip"] = requirements()
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    env["env_vars"] = env_vars
    return env


# --- commands ------------------------------------------------------------------------------------------------------
def follow(client, job_id: str) -> int:
    async def tail():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (stop it with --stop {job_id})", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the log stream can drop; the status below still decides
        print(f"[submit] log stream ended: {err}", file=sys.stderr)
    info = client.get_job_info(job_id)
    while str(info.status.value if hasattr(info.status, "value") else info.status) not in TERMINAL:
        time.sleep(2)
        info = client.get_job_info(job_id)
    return report_end(info, job_id)


def status_name(info) -> str:
    return str(getattr(info.status, "value", info.status))


def report_end(info, job_id: str) -> int:
    status = status_name(info)
    print(f"[submit] job {job_id} {status}" + (f": {info.message}" if info.message else ""), flush=True)
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code not in (0, 2) else 1


def job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise SubmitError(f"no job {job_id} on this cluster") from None
        raise


def submit(args: argparse.Namespace) -> int:
    space = space_argument(args.space)
    storage, local = storage_argument(args.storage, args.shared_storage)
    check_study(args, storage)
    command = entrypoint(args, space, storage)
    env = runtime_env(args)
    if args.dry_run:
        import json

        print(f"entrypoint  {command}\nruntime_env {json.dumps(env)}\nresults     {storage}/"
              f"{args.name or Path(space).stem}/\ndry run: nothing contacted, nothing submitted")
        return 0
    cluster = Cluster(normalise_address(args.address), args.connect_timeout)
    version = cluster.check()
    note = check_storage(cluster, storage) if local else None
    import ray

    if version != ray.__version__:
        print(f"warning: the cluster runs Ray {version}, this machine {ray.__version__}", file=sys.stderr)
    client = cluster.client()
    name = args.name or Path(space).stem
    job_id = client.submit_job(entrypoint=command, runtime_env=env, submission_id=args.job_id,
                               metadata={"mocostudy": name})
    here = shlex.join([sys.argv[0] if sys.argv[0].endswith("submit") else "study/submit.py",
                       "--address", cluster.address])
    print(f"submitted job {job_id} to {cluster.address}\n"
          f"  entrypoint {command}\n"
          f"  results    {storage}/{name}/ (study.json, trials.csv, history.csv, best_config.yaml, report/)\n"
          f"  follow     {here} --logs {job_id} --follow\n"
          f"  stop       {here} --stop {job_id}", flush=True)
    if note:
        print(note)
    if args.follow:
        return follow(client, job_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if sum(x is not None for x in (args.status, args.logs, args.stop)) > 1:
            raise SubmitError("give one of --status, --logs and --stop")
        job = args.status or args.logs or args.stop
        if job is None:
            return submit(args)
        cluster = Cluster(normalise_address(args.address), args.connect_timeout)
        cluster.check()
        client = cluster.client()
        info = job_info(client, job)
        if args.status:
            print(f"{job} {status_name(info)}" + (f": {info.message}" if info.message else ""))
            print(f"  entrypoint {info.entrypoint}")
            return 0
        if args.logs:
            if args.follow:
                return follow(client, job)
            print(client.get_job_logs(job), end="")
            return 0
        stopped = client.stop_job(job)
        print(f"{job}: {'stop requested' if stopped else 'not running (' + status_name(info) + ')'}")
        return 0
    except SubmitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
