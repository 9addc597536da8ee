#!/usr/bin/env python3
"""Writes a differencing VHDX (a Hyper-V checkpoint's `.avhdx`) over a parent VHDX.

Nothing packaged writes one (`qemu-img` refuses backing files for vhdx), so the tests
make their own from the MS-VHDX specification:

    avhdx.py PARENT CHILD [--block-size BYTES] [--junk BYTE] [--write OFFSET=FILE]...

PARENT is a VHDX (dynamic, from `qemu-img`, or a differencing one this script wrote).
Each `--write` puts the bytes of FILE at byte OFFSET of the child's disk (both whole
logical sectors). A block written in full is FULLY_PRESENT; a block written in part is
PARTIALLY_PRESENT, its sector bitmap marks the written sectors, and its other sectors
hold junk (`--junk`, 0xEE by default), so a reader that ignores the bitmap reads wrong
data. Every other
block is NOT_PRESENT: read from the parent.

Layout of the child: file identifier, two headers (CRC-32C, sequence numbers 1 and 2,
no log to replay), two identical region tables, a zeroed 1 MiB log, a 1 MiB metadata
region (file parameters with HasParent, virtual disk size and page 83 data copied from
the parent's size with a new disk id, logical and physical sector sizes, the parent
locator with `parent_linkage` = the parent's DataWriteGuid, `relative_path` and
`absolute_win32_path`), the BAT, then payload blocks and sector-bitmap blocks.
"""

import argparse
import os
import struct
import uuid

KIB = 1024
MIB = 1024 * KIB

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

NOT_PRESENT = 0
FULLY_PRESENT = 6
PARTIALLY_PRESENT = 7
BITMAP_PRESENT = 6

IS_VIRTUAL_DISK = 2
IS_REQUIRED = 4


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def with_checksum(structure):
    """`structure` with its CRC-32C written at bytes 4..8 (computed over zeros there)."""
    structure = bytearray(structure)
    structure[4:8] = b"\0\0\0\0"
    structure[4:8] = struct.pack("<I", crc32c(structure))
    return bytes(structure)


def read_parent(path):
    """(DataWriteGuid, virtual size, logical sector size, physical sector size) of a VHDX."""
    with open(path, "rb") as f:
        assert f.read(8) == b"vhdxfile", f"{path} is not a VHDX"
        best = None
        for offset in (64 * KIB, 128 * KIB):
            f.seek(offset)
            header = f.read(4 * KIB)
            if header[:4] != b"head" or with_checksum(header) != header:
                continue
            sequence = struct.unpack_from("<Q", header, 8)[0]
            if best is None or sequence > best[0]:
                best = (sequence, uuid.UUID(bytes_le=header[32:48]))
        assert best is not None, f"{path} has no valid header"
        f.seek(192 * KIB)
        table = f.read(64 * KIB)
        assert table[:4] == b"regi" and with_checksum(table) == table
        count = struct.unpack_from("<I", table, 8)[0]
        metadata_offset = None
        for number in range(count):
            entry = table[16 + 32 * number: 48 + 32 * number]
            if uuid.UUID(bytes_le=entry[:16]) == METADATA_REGION:
                metadata_offset = struct.unpack_from("<Q", entry, 16)[0]
        f.seek(metadata_offset)
        metadata = f.read(64 * KIB)
        assert metadata[:8] == b"metadata"
        items = {}
        for number in range(struct.unpack_from("<H", metadata, 10)[0]):
            entry = metadata[32 + 32 * number: 64 + 32 * number]
            item, offset, length = uuid.UUID(bytes_le=entry[:16]), *struct.unpack_from("<II", entry, 16)
            f.seek(metadata_offset + offset)
            items[item] = f.read(length)
    return (
        best[1],
        struct.unpack("<Q", items[VIRTUAL_DISK_SIZE])[0],
        struct.unpack("<I", items[LOGICAL_SECTOR_SIZE])[0],
        struct.unpack("<I", items[PHYSICAL_SECTOR_SIZE])[0],
    )


def parent_locator(linkage, parent, child):
    """The VHDX parent locator: a header and UTF-16 key/value pairs."""
    relative = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
    pairs = [
        ("parent_linkage", "{%s}" % linkage),
        ("relative_path", ".\\" + relative.replace("/", "\\")),
        ("absolute_win32_path", "C:\\Hyper-V\\Virtual Hard Disks\\" + os.path.basename(parent)),
    ]
    header = struct.pack("<16sHH", VHDX_LOCATOR_TYPE.bytes_le, 0, len(pairs))
    entries = b""
    strings = b""
    start = len(header) + 12 * len(pairs)
    for key, value in pairs:
        key, value = key.encode("utf-16-le"), value.encode("utf-16-le")
        key_offset = start + len(strings)
        strings += key
        value_offset = start + len(strings)
        strings += value
        entries += struct.pack("<IIHH", key_offset, value_offset, len(key), len(value))
    return header + entries + strings


def metadata_region(block_size, size, logical, physical, locator):
    items = [
        (FILE_PARAMETERS, struct.pack("<II", block_size, 2), IS_REQUIRED),  # HasParent
        (VIRTUAL_DISK_SIZE, struct.pack("<Q", size), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PAGE_83_DATA, uuid.uuid4().bytes_le, IS_VIRTUAL_DISK | IS_REQUIRED),
        (LOGICAL_SECTOR_SIZE, struct.pack("<I", logical), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PHYSICAL_SECTOR_SIZE, struct.pack("<I", physical), IS_VIRTUAL_DISK | IS_REQUIRED),
        (PARENT_LOCATOR, locator, IS_REQUIRED),
    ]
    region = bytearray(MIB)
    region[:32] = struct.pack("<8sHH20x", b"metadata", 0, len(items))
    offset = 64 * KIB
    for number, (item, data, flags) in enumerate(items):
        struct.pack_into("<16sIIII", region, 32 + 32 * number, item.bytes_le, offset, len(data), flags, 0)
        region[offset: offset + len(data)] = data
        offset += (len(data) + 7) // 8 * 8
    return bytes(region)


def write_child(parent, child, block_size, writes, junk=0xEE):
    linkage, size, logical, physical = read_parent(parent)
    assert block_size % MIB == 0 and block_size & (block_size - 1) == 0
    chunk_ratio = (1 << 23) * logical // block_size
    blocks = -(-size // block_size)
    bitmap_blocks = -(-blocks // chunk_ratio)
    bat_entries = bitmap_blocks * (chunk_ratio + 1)

    # Per touched block: its payload and which of its sectors were written.
    sectors_per_block = block_size // logical
    payloads = {}
    for offset, data in writes:
        assert offset % logical == 0 and len(data) % logical == 0 and offset + len(data) <= size
        for position in range(0, len(data), logical):
            disk_offset = offset + position
            block, within = divmod(disk_offset, block_size)
            if block not in payloads:
                payloads[block] = (bytearray(bytes([junk]) * block_size), set())
            payload, written = payloads[block]
            payload[within: within + logical] = data[position: position + logical]
            written.add(within // logical)

    bat_offset = 3 * MIB
    bat_length = -(-bat_entries * 8 // MIB) * MIB
    next_offset = bat_offset + bat_length
    bat = bytearray(bat_length)
    bitmaps = {}
    layout = []
    for block in sorted(payloads):
        payload, written = payloads[block]
        state = FULLY_PRESENT if len(written) == sectors_per_block else PARTIALLY_PRESENT
        struct.pack_into("<Q", bat, 8 * (block + block // chunk_ratio), state | (next_offset // MIB) << 20)
        layout.append((next_offset, bytes(payload)))
        next_offset += block_size
        chunk = block // chunk_ratio
        bitmap = bitmaps.setdefault(chunk, bytearray(MIB))
        first_sector = (block % chunk_ratio) * sectors_per_block
        for sector in written:
            bit = first_sector + sector
            bitmap[bit // 8] |= 1 << (bit % 8)
    for chunk in sorted(bitmaps):
        entry = chunk * (chunk_ratio + 1) + chunk_ratio
        struct.pack_into("<Q", bat, 8 * entry, BITMAP_PRESENT | (next_offset // MIB) << 20)
        layout.append((next_offset, bytes(bitmaps[chunk])))
        next_offset += MIB

    identifier = bytearray(64 * KIB)
    identifier[:8] = b"vhdxfile"
    creator = "haven tests avhdx.py".encode("utf-16-le")
    identifier[8: 8 + len(creator)] = creator

    file_write_guid = uuid.uuid4()
    data_write_guid = uuid.uuid4()

    def header(sequence):
        structure = bytearray(4 * KIB)
        struct.pack_into(
            "<4sIQ16s16s16sHHIQ", structure, 0, b"head", 0, sequence,
            file_write_guid.bytes_le, data_write_guid.bytes_le, b"\0" * 16,
            0, 1, MIB, MIB,
        )
        return with_checksum(structure)

    table = bytearray(64 * KIB)
    struct.pack_into("<4sIII", table, 0, b"regi", 0, 2, 0)
    struct.pack_into("<16sQII", table, 16, BAT_REGION.bytes_le, bat_offset, bat_length, 1)
    struct.pack_into("<16sQII", table, 48, METADATA_REGION.bytes_le, 2 * MIB, MIB, 1)
    table = with_checksum(table)

    locator = parent_locator(linkage, parent, child)
    with open(child, "wb") as f:
        f.truncate(next_offset)
        for offset, data in [
            (0, bytes(identifier)),
            (64 * KIB, header(1)),
            (128 * KIB, header(2)),
            (192 * KIB, table),
            (256 * KIB, table),
            (2 * MIB, metadata_region(block_size, size, logical, physical, locator)),
            (bat_offset, bytes(bat)),
            *layout,
        ]:
            f.seek(offset)
            f.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent")
    parser.add_argument("child")
    parser.add_argument("--block-size", type=int, default=MIB)
    parser.add_argument("--junk", type=int, default=0xEE, help="byte of unwritten sectors")
    parser.add_argument("--write", action="append", default=[], metavar="OFFSET=FILE")
    args = parser.parse_args()
    writes = []
    for spec in args.write:
        offset, path = spec.split("=", 1)
        with open(path, "rb") as f:
            writes.append((int(offset), f.read()))
    write_child(args.parent, args.child, args.block_size, writes, args.junk)


if __name__ == "__main__":
    main()
