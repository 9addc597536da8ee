# CreateBucket on a bucket one owns, GetBucketLocation, and request ids in
# headers and error bodies.
import re

s3.create_bucket(Bucket="owned")
# The node answers 409 BucketAlreadyOwnedByYou in every region (AWS does so
# everywhere but us-east-1, whose legacy 200 cannot tell a new bucket from an old one).
try:
    s3.create_bucket(Bucket="owned")
    raise AssertionError("second CreateBucket succeeded")
except ClientError as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 409, e.response
    assert e.response["Error"]["Code"] == "BucketAlreadyOwnedByYou", e.response
    assert re.fullmatch(r"[0-9A-F]{16}", e.response["ResponseMetadata"]["RequestId"]), e.response
expect(400, "IllegalLocationConstraintException", lambda: s3.create_bucket(
    Bucket="elsewhere", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}), "foreign region")
expect(404, "404", lambda: s3.head_bucket(Bucket="elsewhere"), "refused bucket created")  # a HEAD has no body
s3.create_bucket(Bucket="here", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})

# us-east-1 is the empty LocationConstraint.
assert s3.get_bucket_location(Bucket="owned")["LocationConstraint"] is None
expect(404, "NoSuchBucket", lambda: s3.get_bucket_location(Bucket="no-such-bucket"), "location of a missing bucket")

# Every answer has an x-amz-request-id, a new one each time.
ids = [s3.head_bucket(Bucket="owned")["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"] for _ in range(3)]
assert all(re.fullmatch(r"[0-9A-F]{16}", i) for i in ids) and len(set(ids)) == 3, ids

# An error body names the request id of its header.
for url in [s3.generate_presigned_url("get_object", Params={"Bucket": "owned", "Key": "missing"}),
            s3.generate_presigned_url("list_objects_v2", Params={"Bucket": "no-such-bucket"})]:
    try:
        urllib.request.urlopen(url)
        raise AssertionError("no error")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        header = e.headers["x-amz-request-id"]
        assert e.code == 404 and re.fullmatch(r"[0-9A-F]{16}", header), (e.code, header)
        assert f"<RequestId>{header}</RequestId>" in body, body
        assert body.count("<RequestId>") == 1 and body.rstrip().endswith("</Error>"), body
print("ALL OK")
