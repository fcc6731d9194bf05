# Sourced by the GPU run scripts (repository root): import the repo as the `latentrt` namespace
# without installing it (the folders map to subpackages, as pyproject's package-dir says).
PKG=$(mktemp -d)
mkdir -p "$PKG/latentrt"
cp -r "$(pwd)"/latentrt/. "$PKG/latentrt/"
for sub in samplers runtime graphs plugins export; do ln -s "$(pwd)/$sub" "$PKG/latentrt/$sub"; done
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
