"""The page template of `dvc plots show/diff` that draws its charts offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN and shows blank charts without the
internet. `make install` runs this once: it fetches the versions DVC's page names from the npm
registry (checked by SHA-256) and writes them, inlined, into .dvc/plots/offline.html, which
.dvc/config names as `plots.html_template`. Where the registry cannot be reached it writes DVC's
own page (CDN scripts) instead and says so.

    python -m anime_dcgan.offline_plots .dvc/plots/offline.html
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

from anime_dcgan.util.io import atomic_write_text

# (package, version, file in its tarball, SHA-256 of the tarball): the scripts of dvc-render's page
PACKAGES = (
    ("vega", "5.20.2", "package/build/vega.min.js", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b"),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b"),
)
# {scripts}, {plot_divs} and {refresh_tag} are dvc-render's placeholders
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def package_script(name: str, version: str, member: str, sha256: str, registry: str) -> str:
    import requests

    url = f"{registry.rstrip('/')}/{name}/-/{name}-{version}.tgz"
    response = requests.get(url, timeout=60)
    response.raise_for_status()
    digest = hashlib.sha256(response.content).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url} has SHA-256 {digest}, expected {sha256}")
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        return archive.extractfile(member).read().decode()


def write_template(target: Path, registry: str) -> bool:
    """Write the page; True when its scripts are inlined, False when it fell back to the CDN's."""
    try:
        scripts = "\n".join(f"<script>{package_script(*package, registry)}</script>" for package in PACKAGES)
        inlined = True
    except Exception as exc:  # no registry: DVC's own page, which needs the internet to draw
        print(f"offline_plots: could not fetch vega from {registry} ({exc}); `dvc plots` pages will load it "
              "from a CDN", file=sys.stderr)
        scripts, inlined = "{scripts}", False
    atomic_write_text(target, PAGE.replace("SCRIPTS", scripts))
    return inlined


if __name__ == "__main__":
    write_template(Path(sys.argv[1]), os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org"))
