#!/usr/bin/env bash
# Seed corpus per fuzz target, from the repository's fixtures and from fuzz-seeds (caches, a journal and a model
# written by the library itself with the narrow test network). No Python: CI runs this.
# Usage: Fuzz/make_corpus.sh [CORPUS]   (default Fuzz/corpus; run after building the fuzz package)
set -euo pipefail
cd "$(dirname "$0")"
corpus=${1:-corpus}
fixtures=../Tests/Fixtures
mkdir -p "$corpus"/{image,weights,cache,journal,model,pipeline}

# Images under 16 kB keep libFuzzer's input size (the largest seed) small enough for fast mutation.
find "$fixtures/images" -maxdepth 2 -type f \( -name '*.jpg' -o -name '*.png' \) -size -16k -exec cp {} "$corpus/image/" \;
cp "$fixtures"/weights/*.pth "$fixtures"/weights/*.safetensors "$fixtures"/weights/*.h5 "$corpus/weights/"
cp ../pipelines/*.yaml "$corpus/pipeline/"
cat > "$corpus/pipeline/stages.yaml" <<'YAML'
name: tiny
images: data/shapes
layer: pool5
stages:
  - {stage: extract, batch_size: 4}
  - {stage: train-head, name: sgd, epochs: 2, lr: 0.01, optimizer: sgd}
  - {stage: full-finetune, name: ft, epochs: 1, image_size: 112}
YAML
cat > "$corpus/pipeline/anchors.yaml" <<'YAML'
images: &root data
out: *root
stages: [{stage: extract}, &h {stage: train-head, epochs: 1}, *h]
YAML

.build/release/fuzz-seeds .. "$corpus" > /dev/null
# The hostile fixtures (each once crashed, hung or was accepted; now refused) keep those paths under mutation;
# not libhdf5_spins_forever.h5, each of whose mutations would cost the probe its whole timeout.
hostile=$fixtures/hostile
cp "$hostile"/*loop*.h5 "$hostile"/deep_weights.h5 "$hostile"/external_*.h5 "$hostile"/virtual_weights.h5 \
   "$hostile"/*.safetensors "$hostile"/damaged_group_btree.h5 "$hostile"/libhdf5_crash_local_heap.h5 \
   "$hostile"/libhdf5_huge_malloc_local_heap.h5 "$corpus/weights/"
cp "$hostile"/model_*.h5 "$corpus/model/"
cp "$hostile"/cache_chunk_size_4GB.h5 "$corpus/cache/"
# A model's reader also meets weights files, and a cache's reader models: each seeds the other's refusals.
cp "$fixtures/weights/tiny_f16.h5" "$corpus/model/"
cp "$corpus/model/head.h5" "$corpus/cache/"
for target in image weights cache journal model pipeline; do
    echo "$target: $(ls "$corpus/$target" | wc -l) seeds, $(du -sk "$corpus/$target" | cut -f1) kB"
done
