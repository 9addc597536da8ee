# Object tagging with AWS's limits, GetObjectAttributes, and conditional deletes.
# Run twice around a restart of the node: "write" stores, "check" reads back.
import zlib
phase = sys.argv[2]
appender = client("appender", "appender-secret")
reader = client("reader", "reader-secret")


def tags_of(key):
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="tags", Key=key)["TagSet"]}


def part(n, seed):
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


if phase == "write":
    s3.create_bucket(Bucket="tags")
    # x-amz-tagging on PutObject, even by a key that may only create.
    appender.put_object(Bucket="tags", Key="tagged", Body=b"tagged", Tagging="project=haven&owner=ops%20team")
    assert tags_of("tagged") == {"project": "haven", "owner": "ops team"}
    assert s3.get_object(Bucket="tags", Key="tagged")["TagCount"] == 2
    s3.put_object(Bucket="tags", Key="plain", Body=b"plain")
    assert "TagCount" not in s3.get_object(Bucket="tags", Key="plain")
    assert s3.get_object_tagging(Bucket="tags", Key="plain")["TagSet"] == []
    # The limits: 10 tags, keys of 128 characters, values of 256, keys unique.
    ten = [{"Key": f"k{i}", "Value": "v" * 256 if i == 0 else "x"} for i in range(9)] + [{"Key": "\u00e9" * 128, "Value": ""}]
    s3.put_object_tagging(Bucket="tags", Key="plain", Tagging={"TagSet": ten})
    assert len(tags_of("plain")) == 10
    for bad, what in [(ten + [{"Key": "k10", "Value": "x"}], "11 tags"),
                      ([{"Key": "k" * 129, "Value": "x"}], "129-character key"),
                      ([{"Key": "k", "Value": "v" * 257}], "257-character value"),
                      ([{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}], "duplicate key")]:
        expect(400, "InvalidTag", lambda: s3.put_object_tagging(Bucket="tags", Key="plain", Tagging={"TagSet": bad}), what)
        assert len(tags_of("plain")) == 10, what
    expect(400, "InvalidTag", lambda: s3.put_object(Bucket="tags", Key="refused", Body=b"x", Tagging="a=1&a=2"), "header")
    expect(404, "404", lambda: s3.head_object(Bucket="tags", Key="refused"), "refused object stored")
    expect(404, "NoSuchKey", lambda: s3.put_object_tagging(Bucket="tags", Key="missing", Tagging={"TagSet": []}), "missing")
    expect(404, "NoSuchKey", lambda: s3.get_object_tagging(Bucket="tags", Key="missing"), "missing")
    # Changing tags changes an existing object: not for read or append keys.
    for other in (reader, appender):
        expect(403, "AccessDenied", lambda: other.put_object_tagging(Bucket="tags", Key="tagged", Tagging={"TagSet": []}), "tagging")
        expect(403, "AccessDenied", lambda: other.delete_object_tagging(Bucket="tags", Key="tagged"), "untagging")
    assert reader.get_object_tagging(Bucket="tags", Key="tagged")["TagSet"]
    # Copies keep the tags, or take new ones with TaggingDirective=REPLACE.
    s3.copy_object(Bucket="tags", Key="copy", CopySource="tags/tagged")
    assert tags_of("copy") == {"project": "haven", "owner": "ops team"}
    s3.copy_object(Bucket="tags", Key="copy2", CopySource="tags/tagged", TaggingDirective="REPLACE", Tagging="new=1")
    assert tags_of("copy2") == {"new": "1"}
    # Multipart uploads take them at creation.
    up = s3.create_multipart_upload(Bucket="tags", Key="multi", Tagging="kind=multipart")
    parts = [s3.upload_part(Bucket="tags", Key="multi", UploadId=up["UploadId"], PartNumber=n, Body=part(size, n))
             for n, size in [(1, 5 << 20), (2, 1 << 20)]]
    s3.complete_multipart_upload(Bucket="tags", Key="multi", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": p["ETag"]} for n, p in enumerate(parts, 1)]})
    assert tags_of("multi") == {"kind": "multipart"}
    s3.put_object(Bucket="tags", Key="untag", Body=b"x", Tagging="gone=soon")
    s3.delete_object_tagging(Bucket="tags", Key="untag")
    print("WRITTEN")
    sys.exit(0)

# After the restart: tags were durable.
assert tags_of("tagged") == {"project": "haven", "owner": "ops team"}
assert len(tags_of("plain")) == 10 and tags_of("multi") == {"kind": "multipart"}
assert tags_of("untag") == {} and tags_of("copy2") == {"new": "1"}
# Tagging does not change the object: data, ETag and Last-Modified stay.
head = s3.head_object(Bucket="tags", Key="plain")
assert head["ETag"] == '"%s"' % hashlib.md5(b"plain").hexdigest(), head

# GetObjectAttributes: what is asked for, nothing else.
body = b"checksummed"
s3.put_object(Bucket="tags", Key="attrs", Body=body, ChecksumAlgorithm="SHA256")
everything = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
a = s3.get_object_attributes(Bucket="tags", Key="attrs", ObjectAttributes=everything)
assert a["ETag"].strip('"') == hashlib.md5(body).hexdigest(), a
assert a["ObjectSize"] == len(body) and a["StorageClass"] == "STANDARD", a
assert a["Checksum"]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode(), a
assert "ObjectParts" not in a and "LastModified" in a, a
only = s3.get_object_attributes(Bucket="tags", Key="attrs", ObjectAttributes=["ObjectSize"])
assert only["ObjectSize"] == len(body) and "ETag" not in only and "Checksum" not in only, only
m = s3.get_object_attributes(Bucket="tags", Key="multi", ObjectAttributes=everything)
assert m["ObjectParts"]["TotalPartsCount"] == 2 and m["ETag"].strip('"').endswith("-2"), m
# Created with no algorithm: the whole-object CRC-64/NVME AWS gives every new object.
assert m["ObjectSize"] == (5 << 20) + (1 << 20) and set(m["Checksum"]) == {"ChecksumCRC64NVME"}, m
expect(404, "NoSuchKey", lambda: s3.get_object_attributes(Bucket="tags", Key="missing", ObjectAttributes=["ETag"]), "attributes")
# Parts are listed for uploads with an additional checksum, a page at a time.
upload = s3.create_multipart_upload(Bucket="tags", Key="summed", ChecksumAlgorithm="CRC32")["UploadId"]
bodies = [part(5 << 20, 11), part(5 << 20, 12), b"last part"]


def crc32_of(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket="tags", Key="summed", UploadId=upload, PartNumber=n, Body=b,
                                                  ChecksumAlgorithm="CRC32")["ETag"], "ChecksumCRC32": crc32_of(b)}
        for n, b in enumerate(bodies, 1)]
s3.complete_multipart_upload(Bucket="tags", Key="summed", UploadId=upload, MultipartUpload={"Parts": done})
page = s3.get_object_attributes(Bucket="tags", Key="summed", ObjectAttributes=["ObjectParts"], MaxParts=2)["ObjectParts"]
assert page["TotalPartsCount"] == 3 and page["IsTruncated"] and page["MaxParts"] == 2, page
assert page["PartNumberMarker"] == 0 and page["NextPartNumberMarker"] == 2, page
assert [(p["PartNumber"], p["Size"], p["ChecksumCRC32"]) for p in page["Parts"]] == \
    [(n, len(b), crc32_of(b)) for n, b in enumerate(bodies[:2], 1)], page
rest = s3.get_object_attributes(Bucket="tags", Key="summed", ObjectAttributes=["ObjectParts"],
                                PartNumberMarker=2)["ObjectParts"]
assert not rest["IsTruncated"] and rest["NextPartNumberMarker"] == 3 and rest["MaxParts"] == 1000, rest
assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, len(b"last part"))], rest
# Without an additional checksum only the count (see "multi" above: no Parts).
assert "Parts" not in m["ObjectParts"], m
# Copy onto itself: refused unless something changes (here the metadata).
s3.put_object(Bucket="tags", Key="self", Body=b"self", Metadata={"old": "1"}, ContentType="text/plain")
etag = s3.head_object(Bucket="tags", Key="self")["ETag"]
status, code = refusal(lambda: s3.copy_object(Bucket="tags", Key="self", CopySource="tags/self"))
assert (status, code) == (400, "InvalidRequest"), (status, code)
try:
    s3.copy_object(Bucket="tags", Key="self", CopySource="tags/self", MetadataDirective="COPY")
    raise AssertionError("copy onto itself with COPY accepted")
except ClientError as e:
    assert "copy an object to itself without changing" in e.response["Error"]["Message"], e.response
s3.copy_object(Bucket="tags", Key="self", CopySource="tags/self", MetadataDirective="REPLACE",
               Metadata={"new": "2"}, ContentType="application/x-new")
head = s3.head_object(Bucket="tags", Key="self")
assert head["Metadata"] == {"new": "2"} and head["ContentType"] == "application/x-new", head
assert head["ETag"] == etag and s3.get_object(Bucket="tags", Key="self")["Body"].read() == b"self", head
# A key that may only create cannot replace an object, even with itself.
denied(lambda: appender.copy_object(Bucket="tags", Key="self", CopySource="tags/self", MetadataDirective="REPLACE"),
       "append key replacing metadata")
# What the node does not do is refused, never answered as if done.
expect(501, "NotImplemented", lambda: s3.list_object_versions(Bucket="tags"), "versions")
expect(501, "NotImplemented", lambda: s3.get_object_tagging(Bucket="tags", Key="tagged", VersionId="v1"), "version")
expect(501, "NotImplemented", lambda: s3.get_object(Bucket="tags", Key="tagged", VersionId="v1"), "GET of a version")
expect(501, "NotImplemented", lambda: s3.delete_object(Bucket="tags", Key="tagged", VersionId="v1"), "delete of a version")
# "null" is the version id of every object of an unversioned bucket.
assert s3.get_object(Bucket="tags", Key="tagged", VersionId="null")["Body"].read() == b"tagged"

# Conditional deletes: If-Match (an ETag or *), size and modification time.
etag = s3.head_object(Bucket="tags", Key="copy")["ETag"]
expect(412, "PreconditionFailed", lambda: s3.delete_object(Bucket="tags", Key="copy", IfMatch='"0123"'), "wrong etag")
expect(412, "PreconditionFailed", lambda: s3.delete_object(Bucket="tags", Key="copy", IfMatchSize=99), "wrong size")
s3.head_object(Bucket="tags", Key="copy")
s3.delete_object(Bucket="tags", Key="copy", IfMatch=etag)
expect(404, "404", lambda: s3.head_object(Bucket="tags", Key="copy"), "deleted")
expect(404, "NoSuchKey", lambda: s3.delete_object(Bucket="tags", Key="copy", IfMatch=etag), "absent, etag")
expect(404, "NoSuchKey", lambda: s3.delete_object(Bucket="tags", Key="copy", IfMatch="*"), "absent, *")
s3.delete_object(Bucket="tags", Key="copy")  # unconditional: a missing key is deleted
# The same for writes: If-Match on a missing key is 404 NoSuchKey, and writes nothing.
expect(404, "NoSuchKey", lambda: s3.put_object(Bucket="tags", Key="copy", Body=b"x", IfMatch=etag), "put, absent")
expect(404, "404", lambda: s3.head_object(Bucket="tags", Key="copy"), "conditional put stored")
s3.delete_object(Bucket="tags", Key="copy2", IfMatch="*", IfMatchSize=6)
r = s3.delete_objects(Bucket="tags", Delete={"Objects": [
    {"Key": "tagged", "ETag": '"0123"'}, {"Key": "untag", "ETag": s3.head_object(Bucket="tags", Key="untag")["ETag"]}]})
assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("tagged", "PreconditionFailed")], r
assert [d["Key"] for d in r["Deleted"]] == ["untag"], r
s3.head_object(Bucket="tags", Key="tagged")
print("ALL OK")
