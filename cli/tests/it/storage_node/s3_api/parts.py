# Parts as AWS documents them: UploadPartCopy (whole sources and byte ranges, copy-source
# conditions), GetObject and HeadObject by part number (multipart objects keep their part
# boundaries), and ListBuckets paginated with max-buckets and continuation tokens.
s3.create_bucket(Bucket="parts")
source = os.urandom((6 << 20) + 12345)
s3.put_object(Bucket="parts", Key="source", Body=source)
small = b"small object"
s3.put_object(Bucket="parts", Key="small", Body=small)
etag = s3.head_object(Bucket="parts", Key="source")["ETag"]

# A multipart object made of a copied range, an uploaded part and a whole copied object.
up = s3.create_multipart_upload(Bucket="parts", Key="joined")
uid = up["UploadId"]
first = (5 << 20) + 7
r1 = s3.upload_part_copy(Bucket="parts", Key="joined", UploadId=uid, PartNumber=1,
                         CopySource={"Bucket": "parts", "Key": "source"}, CopySourceRange=f"bytes=3-{first + 2}",
                         CopySourceIfMatch=etag)
assert r1["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(source[3:first + 3]).hexdigest(), r1
middle = os.urandom(5 << 20)
r2 = s3.upload_part(Bucket="parts", Key="joined", UploadId=uid, PartNumber=2, Body=middle)
r3 = s3.upload_part_copy(Bucket="parts", Key="joined", UploadId=uid, PartNumber=3, CopySource="parts/small")
assert r3["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(small).hexdigest(), r3
# What AWS refuses: malformed ranges, ranges beyond the source, failed conditions, no source.
for bad in ["bytes=5-2", "bytes=0-", "0-10", f"bytes=0-{len(source)}"]:
    expect(400, "InvalidArgument", lambda: s3.upload_part_copy(Bucket="parts", Key="joined", UploadId=uid, PartNumber=4,
           CopySource="parts/source", CopySourceRange=bad), f"range {bad}")
expect(412, "PreconditionFailed", lambda: s3.upload_part_copy(Bucket="parts", Key="joined", UploadId=uid, PartNumber=4,
       CopySource="parts/source", CopySourceIfNoneMatch=etag), "if-none-match")
expect(404, "NoSuchKey", lambda: s3.upload_part_copy(Bucket="parts", Key="joined", UploadId=uid, PartNumber=4,
       CopySource="parts/missing"), "missing source")
expect(404, "NoSuchUpload", lambda: s3.upload_part_copy(Bucket="parts", Key="joined", UploadId="0" * 32, PartNumber=1,
       CopySource="parts/small"), "missing upload")
listed = [(p["PartNumber"], p["Size"]) for p in s3.list_parts(Bucket="parts", Key="joined", UploadId=uid)["Parts"]]
assert listed == [(1, first), (2, 5 << 20), (3, len(small))], listed
s3.complete_multipart_upload(Bucket="parts", Key="joined", UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": n, "ETag": e} for n, e in [(1, r1["CopyPartResult"]["ETag"]), (2, r2["ETag"]),
                                              (3, r3["CopyPartResult"]["ETag"])]]})
expected = [source[3:first + 3], middle, small]
assert s3.get_object(Bucket="parts", Key="joined")["Body"].read() == b"".join(expected)

# Each part by number: 206, its bytes and Content-Range, the parts count.
offset, total = 0, sum(map(len, expected))
for n, data in enumerate(expected, 1):
    got = s3.get_object(Bucket="parts", Key="joined", PartNumber=n)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, got
    assert got["Body"].read() == data and got["ContentLength"] == len(data), n
    assert got["ContentRange"] == f"bytes {offset}-{offset + len(data) - 1}/{total}", got
    assert got["PartsCount"] == 3, got
    head = s3.head_object(Bucket="parts", Key="joined", PartNumber=n)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 206 and head["ContentLength"] == len(data), head
    assert head["PartsCount"] == 3, head
    offset += len(data)
expect(416, "InvalidPartNumber", lambda: s3.get_object(Bucket="parts", Key="joined", PartNumber=4), "part 4 of 3")
expect(416, "416", lambda: s3.head_object(Bucket="parts", Key="joined", PartNumber=4), "head part 4 of 3")
expect(400, "InvalidRequest", lambda: s3.get_object(Bucket="parts", Key="joined", PartNumber=1, Range="bytes=0-1"),
       "part and range")
# An object that is not multipart is its own part 1.
got = s3.get_object(Bucket="parts", Key="small", PartNumber=1)
assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["Body"].read() == small, got
assert got["ContentRange"] == f"bytes 0-{len(small) - 1}/{len(small)}" and "PartsCount" not in got, got
expect(416, "InvalidPartNumber", lambda: s3.get_object(Bucket="parts", Key="small", PartNumber=2), "part 2 of 1")

# ListBuckets in pages: max-buckets, continuation tokens, prefix, bucket-region.
for i in range(5):
    s3.create_bucket(Bucket=f"page-{i}")
everything = [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert everything == sorted(["parts"] + [f"page-{i}" for i in range(5)]), everything
seen, token, pages = [], None, 0
while True:
    kwargs = {"MaxBuckets": 2}
    if token:
        kwargs["ContinuationToken"] = token
    page = s3.list_buckets(**kwargs)
    assert len(page["Buckets"]) <= 2 and all(b["BucketRegion"] == "us-east-1" for b in page["Buckets"]), page
    seen += [b["Name"] for b in page["Buckets"]]
    pages += 1
    token = page.get("ContinuationToken")
    if not token:
        break
assert seen == everything and pages == (len(everything) + 1) // 2, (seen, pages)
paginated = [b["Name"] for p in s3.get_paginator("list_buckets").paginate(PaginationConfig={"PageSize": 3})
             for b in p["Buckets"]]
assert paginated == everything, paginated
prefixed = s3.list_buckets(Prefix="page-", MaxBuckets=10)
assert [b["Name"] for b in prefixed["Buckets"]] == [f"page-{i}" for i in range(5)], prefixed
assert prefixed["Prefix"] == "page-" and "ContinuationToken" not in prefixed, prefixed
assert s3.list_buckets(BucketRegion="eu-west-1")["Buckets"] == []
expect(400, "InvalidArgument", lambda: s3.list_buckets(MaxBuckets=10001), "max-buckets over 10000")
expect(400, "InvalidArgument", lambda: s3.list_buckets(ContinuationToken="forged"), "foreign token")
print("ALL OK")
