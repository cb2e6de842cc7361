#!/bin/sh
# Entry point of the Docker `trainer` target (the compose `trainer` service, one-shot): trains the demo TVNet
# on the bundled SMD sample into $VIGIL_MODELS_DIR, unless a bundle (<name>/<version>/manifest.json, the
# manifest written last) is already there. Empty the models volume to retrain. Extra arguments go to
# `vigil train` (e.g. --epochs 2).
set -eu
models_dir="${VIGIL_MODELS_DIR:-/models}"
train_data="${VIGIL_DEMO_TRAIN_DATA:-/opt/vigil/data/train.txt.gz}"

existing="$(find "$models_dir" -mindepth 3 -maxdepth 3 -name manifest.json -print 2>/dev/null | head -n 1)"
if [ -n "$existing" ]; then
  echo "trainer: bundle $(dirname "$existing") exists; nothing to train"
  exit 0
fi
echo "trainer: no bundle in $models_dir; training the demo TVNet on $train_data (a few minutes on CPU)"
exec vigil train --model tvnet --train "$train_data" --out "$models_dir" --quiet "$@"
