# Shared by the S3 API conformance scripts (cli/tests/it/storage_node/s3_api.rs):
# boto3 clients of the node under test and checks of S3 errors as AWS documents
# them (HTTP status and error code).
import sys, os, hashlib, base64, json, urllib.request, urllib.error
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = sys.argv[1]


def client(key=None, secret=None):
    return boto3.client(
        "s3", endpoint_url=endpoint,
        aws_access_key_id=key or os.environ["KEY"], aws_secret_access_key=secret or os.environ["SECRET"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, s3={"addressing_style": "path"}))


s3 = client()


def refusal(fn):
    """(HTTP status, S3 error code) of a call that must fail."""
    try:
        fn()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    raise AssertionError("the call succeeded")


def code_of(fn):
    """The S3 error code of a call, or None when it succeeds."""
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def denied(fn, what):
    """Asserts that the call is refused with AccessDenied."""
    code = code_of(fn)
    assert code == "AccessDenied", f"{what}: {code or 'accepted'}"


def expect(status, code, fn, what):
    got = refusal(fn)
    assert got == (status, code), f"{what}: expected {(status, code)}, got {got}"
