"""S3-compatible object storage for masks and crops, under content-addressed keys (``edge-seg consume --objects``).

``s3://BUCKET/PREFIX``: objects go to ``PREFIX/{kind}/{sha[:2]}/{sha256}.{ext}`` (``kind`` is ``crops``
or ``masks``), so writing one twice (a redelivered message, a retry after a crash) writes the same
bytes to the same key: retries are idempotent and a row never names an object that differs from
what it described. The endpoint and credentials come from boto3's usual places: the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) or
its config files (``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE``, a ``[profile]`` via
``AWS_PROFILE``). Any S3-compatible store works (SeaweedFS, MinIO, Ceph RGW, AWS S3).

Writes are synchronous (the row is committed only after its object is stored); ``put_many`` writes
a batch in parallel on a small thread pool (each put is a few ms of waiting on the network).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from edge_seg.errors import StoreError, StoreUnavailableError

POOL_THREADS = 8
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


def content_key(prefix: str, kind: str, data: bytes, ext: str) -> str:
    """``prefix/kind/ab/abcdef….ext`` where ``abcdef…`` is the SHA-256 of ``data``."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{prefix}/{kind}/{digest[:2]}/{digest}.{ext}" if prefix else f"{kind}/{digest[:2]}/{digest}.{ext}"


def parse_objects_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at the ends)."""
    parts = urlsplit(url or "")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StoreError(f"objects URL must look like s3://bucket/prefix, got '{url}' "
                         "(endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)")
    return parts.netloc, parts.path.strip("/")


def _reason(err: Exception) -> str:
    code = getattr(err, "response", {}).get("Error", {}).get("Code") if hasattr(err, "response") else None
    text = " ".join(str(err).split())
    return f"{code}: {text}"[:300] if code else f"{type(err).__name__}: {text}"[:300]


class ObjectStore:
    """One bucket and prefix of an S3-compatible store (thread-safe: boto3 clients are)."""

    def __init__(self, url: str):
        import boto3
        from botocore.config import Config

        self.url = url
        self.bucket, self.prefix = parse_objects_url(url)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # botocore's INFO lines are noise on the CLI
            logging.getLogger("botocore").setLevel(logging.WARNING)
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                        max_pool_connections=POOL_THREADS * 2)
        # a session of its own: boto3's default one keeps the first credentials it read for the whole process
        self.client = boto3.session.Session().client("s3", config=config)
        self.endpoint = self.client.meta.endpoint_url
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.puts = 0

    def check(self) -> None:
        """Raise a one-line ``StoreError`` unless the bucket is there and the credentials are accepted."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket '{self.bucket}' does not exist at {self.endpoint}: create it first") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(f"{self.endpoint} refused the credentials for bucket '{self.bucket}' ({code}): "
                                 "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
            raise StoreError(f"cannot use bucket '{self.bucket}' at {self.endpoint}: {_reason(err)}") from None
        except BotoCoreError as err:
            raise StoreError(f"cannot reach object storage at {self.endpoint}: {_reason(err)} "
                             "(set AWS_ENDPOINT_URL for a non-AWS store)") from None

    def put(self, kind: str, data: bytes, ext: str) -> str:
        """Store ``data``; its key. Raises ``StoreUnavailableError`` when the store cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = content_key(self.prefix, kind, data, ext)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=CONTENT_TYPES[ext])
        except (BotoCoreError, ClientError) as err:
            raise StoreUnavailableError(f"cannot write to object storage at {self.endpoint}: {_reason(err)}") from None
        self.puts += 1
        return key

    def put_many(self, items: list[tuple[str, bytes, str]]) -> list[str]:
        """``put`` each (kind, data, ext) in parallel; the keys in order. All are stored when it returns."""
        if len(items) <= 1:
            return [self.put(*item) for item in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="edge-seg-s3")
        return list(self._pool.map(lambda item: self.put(*item), items))

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as err:
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {_reason(err)}") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


__all__ = ["ObjectStore", "content_key", "parse_objects_url"]
