"""Reading and validating a bundle directory: the manifest and the files it names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentrt.errors import BundleError

FORMAT_NAME = "latentrt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("family", "components", "text_encoders", "latent", "prediction_type", "scheduler")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its root directory and parsed manifest."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Parse and check `path/manifest.json`; every named file must exist inside the bundle."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle directory")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{root}: no {MANIFEST}; is this a bundle written by export?")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{mpath}: corrupt manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise BundleError(f"{mpath}: not a {FORMAT_NAME} manifest")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{mpath}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{mpath}: bundle format version {version} is newer than this latentrt "
                f"understands ({FORMAT_VERSION}); upgrade latentrt or re-export the bundle"
            )
        missing = [k for k in REQUIRED if k not in manifest]
        if missing:
            raise BundleError(f"{mpath}: manifest lacks {', '.join(missing)}")
        bundle = cls(root.resolve(), manifest)
        for name, comp in manifest["components"].items():
            if not isinstance(comp, dict) or "file" not in comp:
                raise BundleError(f"{mpath}: component {name!r} names no file")
            bundle.path(comp["file"], must_exist=True)
        for te in manifest["text_encoders"]:
            if te.get("component") not in manifest["components"]:
                raise BundleError(
                    f"{mpath}: text encoder {te.get('component')!r} is not a component"
                )
            bundle.path(te["tokenizer"], must_exist=True)
        return bundle

    def path(self, relative: str, must_exist: bool = False) -> Path:
        """Resolve a manifest path, refusing anything that escapes the bundle directory."""
        if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
            raise BundleError(f"{self.root}: manifest path {relative!r} must be relative")
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise BundleError(f"{self.root}: manifest path {relative!r} escapes the bundle")
        if must_exist and not resolved.exists():
            raise BundleError(f"{self.root}: {relative} is missing from the bundle")
        return resolved

    def component(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["components"][name]
        except KeyError:
            raise BundleError(f"{self.root}: bundle has no component {name!r}") from None

    def component_path(self, name: str) -> Path:
        return self.path(self.component(name)["file"], must_exist=True)

    @property
    def family(self) -> str:
        return self.manifest["family"]
