# x-amz-checksum-* as AWS documents it, for CRC32, CRC32C, CRC64NVME, SHA-1 and SHA-256:
# verified on arrival (BadDigest, nothing stored), malformed or several at once refused
# (InvalidRequest), kept, and announced by GET and HEAD only with ChecksumMode=ENABLED;
# multipart uploads with COMPOSITE and FULL_OBJECT checksums, per part and whole.
# CRC32C and CRC64NVME are computed here (boto3 needs awscrt for them).
import zlib

s3.create_bucket(Bucket="sums")


def reflected_table(poly, width):
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table, (1 << width) - 1


CRC32C = reflected_table(0x82F63B78, 32)
CRC64NVME = reflected_table(0x9A6C9329AC4BC9B5, 64)


class Crc:
    """A reflected CRC with all-ones start and final XOR, fed in pieces."""

    def __init__(self, spec):
        self.table, self.mask = spec
        self.state = self.mask

    def update(self, data):
        crc, table = self.state, self.table
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self.state = crc
        return self

    def digest(self):
        return (self.state ^ self.mask).to_bytes(8 if self.mask > 0xFFFFFFFF else 4, "big")


assert Crc(CRC32C).update(b"123456789").digest().hex() == "e3069283"
assert Crc(CRC64NVME).update(b"123456789").digest().hex() == "ae8b14860a799888"


def digest(algorithm, *pieces):
    """Raw digest of the concatenated pieces."""
    if algorithm == "CRC32":
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        return crc.to_bytes(4, "big")
    if algorithm in ("CRC32C", "CRC64NVME"):
        crc = Crc(CRC32C if algorithm == "CRC32C" else CRC64NVME)
        for piece in pieces:
            crc.update(piece)
        return crc.digest()
    h = hashlib.new(algorithm.lower())
    for piece in pieces:
        h.update(piece)
    return h.digest()


def b64(algorithm, *pieces):
    return base64.b64encode(digest(algorithm, *pieces)).decode()


def absent(key, what):
    expect(404, "404", lambda: s3.head_object(Bucket="sums", Key=key), what)


ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]
body = os.urandom(3000)
for alg in ALGORITHMS:
    field, key = f"Checksum{alg}", f"put-{alg}"
    value = b64(alg, body)
    r = s3.put_object(Bucket="sums", Key=key, Body=body, **{field: value})
    assert r[field] == value and r["ChecksumType"] == "FULL_OBJECT", r
    plain = s3.head_object(Bucket="sums", Key=key)
    assert field not in plain and "ChecksumType" not in plain, plain
    head = s3.head_object(Bucket="sums", Key=key, ChecksumMode="ENABLED")
    assert head[field] == value and head["ChecksumType"] == "FULL_OBJECT", head
    got = s3.get_object(Bucket="sums", Key=key, ChecksumMode="ENABLED")
    assert got[field] == value and got["Body"].read() == body, got
    assert field not in s3.get_object(Bucket="sums", Key=key, Range="bytes=0-9", ChecksumMode="ENABLED")
    # A wrong value is BadDigest and stores nothing; a malformed one InvalidRequest.
    expect(400, "BadDigest", lambda: s3.put_object(Bucket="sums", Key=f"bad-{alg}", Body=body,
                                                   **{field: b64(alg, body + b"x")}), f"wrong {alg}")
    absent(f"bad-{alg}", f"wrong {alg}")
    expect(400, "InvalidRequest", lambda: s3.put_object(Bucket="sums", Key=f"bad-{alg}", Body=body,
                                                        **{field: "AAAA"}), f"malformed {alg}")
    absent(f"bad-{alg}", f"malformed {alg}")
expect(400, "InvalidRequest", lambda: s3.put_object(Bucket="sums", Key="two", Body=body, ChecksumCRC32=b64("CRC32", body),
                                                    ChecksumSHA256=b64("SHA256", body)), "two checksums")
absent("two", "two checksums")
# A PUT with no checksum at all (boto3 told to send none) gets CRC-64/NVME, as AWS adds
# to every new object: kept, and announced as a checksum the client had sent.
bare = boto3.client(
    "s3", endpoint_url=endpoint, aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
    region_name="us-east-1", config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                                           s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
r = bare.put_object(Bucket="sums", Key="no-checksum", Body=body)
assert r["ChecksumCRC64NVME"] == b64("CRC64NVME", body) and r["ChecksumType"] == "FULL_OBJECT", r
head = bare.head_object(Bucket="sums", Key="no-checksum", ChecksumMode="ENABLED")
assert head["ChecksumCRC64NVME"] == b64("CRC64NVME", body) and "ChecksumCRC32" not in head, head
# One that names another algorithm gets that one alone.
r = s3.put_object(Bucket="sums", Key="crc32-only", Body=body, ChecksumAlgorithm="CRC32")
assert "ChecksumCRC64NVME" not in r and r["ChecksumCRC32"] == b64("CRC32", body), r

# Multipart: the upload's algorithm and type, each part checked, the whole object's
# checksum COMPOSITE (of the parts' checksums, "-N") or FULL_OBJECT.
part1, part2 = os.urandom(5 << 20), os.urandom(1 << 20)
memo = {}


def part_sums(alg):
    """(base64 checksum of part 1, of part 2, of both): each byte hashed once."""
    if alg not in memo:
        if alg in ("CRC32C", "CRC64NVME"):
            first = Crc(CRC32C if alg == "CRC32C" else CRC64NVME).update(part1)
            both = Crc((first.table, first.mask))
            both.state = first.state
            both.update(part2)
            raw = [first.digest(), digest(alg, part2), both.digest()]
        else:
            raw = [digest(alg, part1), digest(alg, part2), digest(alg, part1, part2)]
        memo[alg] = [base64.b64encode(d).decode() for d in raw]
    return memo[alg]


for alg, kind in [("CRC32", "COMPOSITE"), ("CRC32", "FULL_OBJECT"), ("CRC32C", "COMPOSITE"), ("CRC32C", "FULL_OBJECT"),
                  ("CRC64NVME", "FULL_OBJECT"), ("SHA1", "COMPOSITE"), ("SHA256", "COMPOSITE")]:
    field, key = f"Checksum{alg}", f"multi-{alg}-{kind}"
    up = s3.create_multipart_upload(Bucket="sums", Key=key, ChecksumAlgorithm=alg, ChecksumType=kind)
    assert (up["ChecksumAlgorithm"], up["ChecksumType"]) == (alg, kind), up
    uid = up["UploadId"]
    sums, whole_object = part_sums(alg)[:2], part_sums(alg)[2]
    parts = []
    for n, (data, value) in enumerate(zip([part1, part2], sums), 1):
        r = s3.upload_part(Bucket="sums", Key=key, UploadId=uid, PartNumber=n, Body=data, **{field: value})
        assert r[field] == value, r
        parts.append({"PartNumber": n, "ETag": r["ETag"], field: value})
    listed = s3.list_parts(Bucket="sums", Key=key, UploadId=uid)
    assert (listed["ChecksumAlgorithm"], listed["ChecksumType"]) == (alg, kind), listed
    assert [p[field] for p in listed["Parts"]] == sums, listed
    if kind == "COMPOSITE":
        whole = base64.b64encode(digest(alg, *[base64.b64decode(v) for v in sums])).decode() + "-2"
    else:
        whole = whole_object
    # A part's checksum must be the stored one; a wrong whole checksum is BadDigest.
    other = dict(parts[0], **{field: sums[1]})
    expect(400, "InvalidPart", lambda: s3.complete_multipart_upload(Bucket="sums", Key=key, UploadId=uid,
           MultipartUpload={"Parts": [other, parts[1]]}), f"{key}: wrong part checksum")
    wrong_whole = sums[1] if kind == "FULL_OBJECT" else sums[1] + "-2"
    expect(400, "BadDigest", lambda: s3.complete_multipart_upload(Bucket="sums", Key=key, UploadId=uid,
           MultipartUpload={"Parts": parts}, ChecksumType=kind, **{field: wrong_whole}), f"{key}: wrong whole")
    absent(key, f"{key} after refused completions")
    r = s3.complete_multipart_upload(Bucket="sums", Key=key, UploadId=uid, MultipartUpload={"Parts": parts},
                                     ChecksumType=kind, **{field: whole})
    assert r[field] == whole and r["ChecksumType"] == kind, (key, r, whole)
    head = s3.head_object(Bucket="sums", Key=key, ChecksumMode="ENABLED")
    assert head[field] == whole and head["ChecksumType"] == kind and head["PartsCount"] == 2, head
    # A part read by number has its own checksum in a COMPOSITE object.
    got = s3.get_object(Bucket="sums", Key=key, PartNumber=2, ChecksumMode="ENABLED")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["PartsCount"] == 2, got
    assert got["Body"].read() == part2
    if kind == "COMPOSITE":
        assert got[field] == sums[1], got
    else:
        assert field not in got, got

# A multipart upload created with no algorithm still gets a whole-object CRC-64/NVME,
# as AWS adds to every new object; its parts carry none.
up = bare.create_multipart_upload(Bucket="sums", Key="multi-no-checksum")
assert "ChecksumAlgorithm" not in up, up
parts = []
for n, data in enumerate([part1, part2], 1):
    r = bare.upload_part(Bucket="sums", Key="multi-no-checksum", UploadId=up["UploadId"], PartNumber=n, Body=data)
    assert "ChecksumCRC64NVME" not in r, r
    parts.append({"PartNumber": n, "ETag": r["ETag"]})
r = bare.complete_multipart_upload(Bucket="sums", Key="multi-no-checksum", UploadId=up["UploadId"],
                                   MultipartUpload={"Parts": parts})
whole = part_sums("CRC64NVME")[2]
assert r["ChecksumCRC64NVME"] == whole and r["ChecksumType"] == "FULL_OBJECT", r
head = bare.head_object(Bucket="sums", Key="multi-no-checksum", ChecksumMode="ENABLED")
assert head["ChecksumCRC64NVME"] == whole and head["ChecksumType"] == "FULL_OBJECT", head

# What AWS refuses of multipart checksums.
expect(400, "InvalidRequest", lambda: s3.create_multipart_upload(Bucket="sums", Key="x", ChecksumAlgorithm="SHA256",
       ChecksumType="FULL_OBJECT"), "SHA-256 is never full-object")
expect(400, "InvalidRequest", lambda: s3.create_multipart_upload(Bucket="sums", Key="x", ChecksumAlgorithm="CRC64NVME",
       ChecksumType="COMPOSITE"), "CRC-64/NVME is never composite")
up = s3.create_multipart_upload(Bucket="sums", Key="mixed", ChecksumAlgorithm="CRC32")
assert up["ChecksumType"] == "COMPOSITE", up
expect(400, "InvalidRequest", lambda: s3.upload_part(Bucket="sums", Key="mixed", UploadId=up["UploadId"], PartNumber=1,
       Body=part2, ChecksumSHA256=b64("SHA256", part2)), "a part in another algorithm")
r = s3.upload_part(Bucket="sums", Key="mixed", UploadId=up["UploadId"], PartNumber=1, Body=part2,
                   ChecksumCRC32=b64("CRC32", part2))
expect(400, "InvalidRequest", lambda: s3.complete_multipart_upload(Bucket="sums", Key="mixed", UploadId=up["UploadId"],
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]}), "composite without part checksums")
s3.abort_multipart_upload(Bucket="sums", Key="mixed", UploadId=up["UploadId"])
print("ALL OK")
