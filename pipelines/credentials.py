"""Credentials for object stores, found by the standard mechanisms only, checked before any work.

- ``gs://``: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
  application-default login, or the metadata server on Google Cloud), or ``STORAGE_EMULATOR_HOST``
  for an emulator, which needs none.
- ``s3://``: the AWS environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), a profile
  (``AWS_PROFILE``, ``~/.aws/credentials``), or a web-identity token; ``AWS_ENDPOINT_URL`` names an
  emulator, which still takes (any) keys.

Without them, Beam's GCS client retries default credentials with back-off and then connects
anonymously, which on a machine without network access hangs for minutes and prints nothing
useful; this check fails at once with the one line that says what is missing. Set
``NO_GCE_CHECK=true`` off Google Cloud so that no lookup probes the metadata address.
"""
from __future__ import annotations

import os


class MissingCredentials(RuntimeError):
    pass


def _scheme(path: str) -> str:
    return path.split("://", 1)[0].lower() if "://" in path else ""


def _gcs_problem() -> str | None:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        return "gs:// paths need google-auth (part of apache-beam[gcp], see requirements.lock)"
    try:
        google.auth.default()
    except DefaultCredentialsError:
        return ("gs:// paths need Google Cloud credentials and none were found: set GOOGLE_APPLICATION_CREDENTIALS "
                "to a service-account key file or run `gcloud auth application-default login` "
                "(or set STORAGE_EMULATOR_HOST for an emulator)")
    return None


def _s3_problem() -> str | None:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return None
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return None
    files = [env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
             env.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")]
    if any(os.path.isfile(f) for f in files):
        return None
    return ("s3:// paths need AWS credentials and none were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE with ~/.aws/credentials (AWS_ENDPOINT_URL for an emulator)")


def require(paths) -> None:
    """Raise ``MissingCredentials`` naming what is missing for the first store in ``paths`` that
    has no credentials; local paths need none."""
    checked = set()
    for p in paths:
        scheme = _scheme(p or "")
        if scheme in checked:
            continue
        checked.add(scheme)
        problem = {"gs": _gcs_problem, "s3": _s3_problem}.get(scheme, lambda: None)()
        if problem:
            raise MissingCredentials(problem)
