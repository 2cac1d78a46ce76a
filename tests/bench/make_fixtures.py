#!/usr/bin/env python3
"""Write the synthetic benchmark images as OCI image layouts.

Shapes (every layer is an uncompressed tar with one file of seeded random bytes, so the
content is incompressible and the same on every machine):

  many-layers   OCI index of 5 platforms, 50 small layers each (1 to 64 KiB of data)
  large-256m    one platform: a 256 MiB layer and three mid-size layers (16, 32, 64 MiB)
  large-1g      the same with a 1 GiB layer
  large-4g      the same with a 4 GiB layer

A layout that already exists with a complete index.json is left as it is, so a second run
costs nothing. Usage: make_fixtures.py OUTPUT_DIR NAME... ; Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tarfile
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
TAG = "v1"
MiB = 1 << 20
CHUNK = MiB

PLATFORMS = [
    {"os": "linux", "architecture": "amd64"},
    {"os": "linux", "architecture": "arm64"},
    {"os": "linux", "architecture": "arm", "variant": "v7"},
    {"os": "linux", "architecture": "ppc64le"},
    {"os": "linux", "architecture": "s390x"},
]
MANY_LAYERS_PER_PLATFORM = 50
MID_LAYER_SIZES = [16 * MiB, 32 * MiB, 64 * MiB]
LARGE_LAYER_SIZES = {"large-256m": 256 * MiB, "large-1g": 1024 * MiB, "large-4g": 4096 * MiB}
FIXTURE_NAMES = ["many-layers", *LARGE_LAYER_SIZES]


class RandomReader:
    """File-like reader of `size` bytes from a seeded generator."""

    def __init__(self, seed: str, size: int):
        self.generator = random.Random(seed)
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self.remaining:
            size = self.remaining
        self.remaining -= size
        return self.generator.randbytes(size)


class HashingWriter:
    """Writes to a file and computes the sha256 and size of what passed."""

    def __init__(self, path: Path):
        self.file = path.open("wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


class LayoutWriter:
    """Adds blobs to an OCI image layout directory and writes its index.json last."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')

    def add_bytes(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def add_random_layer(self, seed: str, data_size: int) -> dict:
        """Add a tar layer holding one file of `data_size` seeded random bytes."""
        partial = self.blobs / "layer.partial"
        writer = HashingWriter(partial)
        info = tarfile.TarInfo("data/random.bin")
        info.size = data_size
        info.mode = 0o644
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as archive:
            archive.addfile(info, RandomReader(seed, data_size))
        writer.close()
        digest = writer.hash.hexdigest()
        partial.rename(self.blobs / digest)
        return {"mediaType": OCI_LAYER_TAR, "digest": f"sha256:{digest}", "size": writer.size}

    def add_image(self, platform: dict, layers: list[dict]) -> dict:
        """Add the config and manifest of one platform image and return the manifest descriptor."""
        config = {
            **platform,
            "config": {"Cmd": ["/bin/sh"]},
            # The layers are uncompressed, so each diff ID is the layer digest itself.
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        config_descriptor = self.add_bytes(json.dumps(config, indent=2).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": layers,
        }
        descriptor = self.add_bytes(json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)
        descriptor["platform"] = platform
        return descriptor

    def finish(self, top: dict) -> None:
        entry = {key: value for key, value in top.items() if key != "platform"}
        entry["annotations"] = {REF_NAME: TAG}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        (self.root / "index.json").write_text(json.dumps(index, indent=2) + "\n")


def platform_name(platform: dict) -> str:
    return "/".join(filter(None, [platform["os"], platform["architecture"], platform.get("variant")]))


def build_many_layers(layout: LayoutWriter) -> dict:
    sizes = random.Random("many-layers sizes")
    manifests = []
    for platform in PLATFORMS:
        name = platform_name(platform)
        layers = [
            layout.add_random_layer(f"many-layers {name} {number}", sizes.randint(1024, 64 * 1024))
            for number in range(MANY_LAYERS_PER_PLATFORM)
        ]
        manifests.append(layout.add_image(platform, layers))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return layout.add_bytes(json.dumps(index, indent=2).encode(), OCI_INDEX)


def build_large(layout: LayoutWriter, large_size: int) -> dict:
    # The mid-size layers use the same seeds in every variant, so only the large layer differs.
    layers = [layout.add_random_layer(f"large {large_size}", large_size)]
    layers += [layout.add_random_layer(f"mid {size}", size) for size in MID_LAYER_SIZES]
    return layout.add_image(PLATFORMS[0], layers)


def build(output: Path, name: str) -> Path:
    root = output / name
    if (root / "index.json").is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    layout = LayoutWriter(root)
    if name == "many-layers":
        top = build_many_layers(layout)
    else:
        top = build_large(layout, LARGE_LAYER_SIZES[name])
    layout.finish(top)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic benchmark images as OCI image layouts.")
    parser.add_argument("output", type=Path, help="directory that receives one layout per image")
    parser.add_argument("names", nargs="+", choices=FIXTURE_NAMES, metavar="NAME", help=", ".join(FIXTURE_NAMES))
    args = parser.parse_args()
    for name in args.names:
        root = build(args.output, name)
        print(f"{name}: {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
