#!/usr/bin/env bash
# The offline demo: train a CNN teacher, distil a DearKD ViT student from it (both stages), evaluate both, and print
# a table. Uses the embedded Fashion-MNIST subset (5k train / 1k test); about 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUTPUT_DIR:-outputs/demo}
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
COMMON=(--image_size 28 --report_to none --save_strategy epoch --save_total_limit 1 --eval_strategy epoch
        --logging_steps 20 --per_device_train_batch_size 64 --per_device_eval_batch_size 256 --seed 0
        --dataloader_num_workers 0 --disable_tqdm true)

# A stage already finished (its wall_s written) is kept: a re-run resumes a killed stage, and a finished run is never
# trained again (the scripts refuse it; delete $OUT to start over).
if [ ! -f "$OUT/teacher/wall_s" ]; then
  start=$(date +%s)
  python examples/train_teacher.py --model_name_or_path resnet18 --num_train_epochs 3 --learning_rate 2e-3 \
    --output_dir "$OUT/teacher" "${COMMON[@]}"
  echo $(( $(date +%s) - start )) > "$OUT/teacher/wall_s"
fi

if [ ! -f "$OUT/student/wall_s" ]; then
  start=$(date +%s)
  python examples/run.py --teacher_model_name_or_path "$OUT/teacher" --model_type dearkd_vit \
    --config_overrides "patch_size=4,hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128" \
    --num_train_epochs 15 --distillation_stop_epoch 12 --learning_rate 1e-3 --weight_decay 0.05 --warmup_steps 50 \
    --output_dir "$OUT/student" "${COMMON[@]}"
  echo $(( $(date +%s) - start )) > "$OUT/student/wall_s"
fi

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("\n| model | eval accuracy | wall time (s) |\n|---|---|---|")
for name in ("teacher", "student"):
    results = json.loads((out / name / "all_results.json").read_text())
    print(f"| {name} | {results['eval_accuracy']:.4f} | {(out / name / 'wall_s').read_text().strip()} |")
PY
