#!/usr/bin/python3
"""Writes the merged disk of a VHDX chain as libvhdi reads it (Debian's python3-libvhdi):

    /usr/bin/python3 vhdi_merged.py OUT.raw NEWEST.avhdx [PARENT...] BASE.vhdx

The tests check their own differencing VHDX writer (avhdx.py) and Haven's reader
against this independent, packaged reader.
"""

import sys

import pyvhdi


def main():
    out, *paths = sys.argv[1:]
    # Every file object stays referenced while the newest is read: libvhdi reads the
    # parents through them.
    files = []
    for path in paths:
        image = pyvhdi.file()
        image.open(path)
        files.append(image)
    for child, parent in zip(files, files[1:]):
        child.set_parent(parent)
    newest = files[0]
    size = newest.get_media_size()
    with open(out, "wb") as merged:
        position = 0
        while position < size:
            length = min(1 << 20, size - position)
            newest.seek_offset(position, 0)
            data = newest.read_buffer(length)
            if len(data) != length:
                sys.exit(f"libvhdi read {len(data)} of {length} bytes at {position}")
            merged.write(data)
            position += length


if __name__ == "__main__":
    main()
