"""What a search exposes to the network and to other users of the machine, set before Ray starts.

Ray reads its settings from the environment once, when it is imported, and the processes it
starts inherit the driver's environment, so everything here runs in `launch/search.py` before
Ray is imported (`prepare_environment`).

- **Token authentication.** Pico never turns Ray's token authentication off; when
  `RAY_AUTH_MODE` is unset it sets it to `token` itself, which is what Ray would choose, minus
  Ray's warning that suggests turning it off.
- **A local search stays on this machine.** Without `--address`, Ray's node address is the
  loopback address (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, Ray's public switch for a
  single-machine Ray, the default on macOS and Windows). Every Ray process then listens on
  127.0.0.1 only: the GCS, the raylet, the workers' gRPC servers and the agents, which otherwise
  listen on every interface whatever `dashboard_host` says. A cluster search is unchanged.
- **AWS keys never reach Ray.** Ray Tune copies `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
  and the session tokens from the driver's environment into every trial's runtime environment,
  which Ray stores in its control plane and its runtime-env agent writes to the session's logs.
  So the search takes them out of its environment first. On a local search they go to an AWS
  shared-credentials file that only this user can read (`AWS_SHARED_CREDENTIALS_FILE`), where
  the driver's and the trials' S3 clients find them by the standard AWS lookup; it is deleted
  when the search ends. A cluster's nodes cannot read that file, so with `--address` the search
  refuses keys in the environment and asks for an instance profile (cluster.yaml gives every
  node one), which is also what a local search on an EC2 machine should use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pico.errors import PicoError

# The variables Ray Tune copies into each trial's runtime environment (ray.tune.execution.
# class_cache.ENV_VARS_TO_PROPAGATE in Ray 2.60); the key id is not secret but names the key.
AWS_KEY_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)
# How the shared-credentials file names each value (AWS CLI and SDK documentation).
CREDENTIALS_FILE_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_SECURITY_TOKEN": "aws_security_token",
}


def require_token_auth() -> None:
    """Keep Ray's token authentication on, without Ray's advice to opt out of it."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def is_local(address: str | None) -> bool:
    """True when the search starts its own Ray on this machine rather than joining a cluster."""
    return not address and not os.environ.get("RAY_ADDRESS")


def check_aws_keys(address: str | None) -> None:
    """Refuse AWS keys in the environment of a cluster search (see the module docstring)."""
    present = [name for name in AWS_KEY_VARIABLES if os.environ.get(name)]
    if present and not is_local(address):
        raise PicoError(
            f"{present[0]} is set: Ray Tune would copy it into every trial's runtime environment, "
            "which Ray logs in plain text; unset the AWS_* key variables and give the cluster's "
            "nodes an instance profile (cluster.yaml does)"
        )


@contextmanager
def prepare_environment(address: str | None) -> Iterator[None]:
    """Set the environment Ray will start in (token auth, loopback, no AWS keys) for the body
    of the `with`; at its end the credentials file it made is deleted and the keys are put
    back. Call `check_aws_keys` first, with the other input checks."""
    require_token_auth()
    if not is_local(address):
        yield
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    keys = {name: os.environ.pop(name) for name in AWS_KEY_VARIABLES if os.environ.get(name)}
    if not keys:
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="pico-aws-"))  # 0700: this user only
    previous_file = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    try:
        profile = os.environ.get("AWS_PROFILE", "default")
        lines = [f"[{profile}]"] + [f"{CREDENTIALS_FILE_KEYS[k]} = {v}" for k, v in keys.items()]
        path = folder / "credentials"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("\n".join(lines) + "\n")
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(path)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.update(keys)
        if previous_file is None:
            os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
        else:
            os.environ["AWS_SHARED_CREDENTIALS_FILE"] = previous_file
