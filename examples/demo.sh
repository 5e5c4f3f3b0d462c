#!/usr/bin/env bash
# The offline demo: train a CNN teacher, then the same DearKD ViT student three ways (without a teacher, DeiT-style
# logit distillation, DearKD), each with two seeds, evaluate them and print a table, so the gain DearKD buys and the
# run-to-run spread are on one screen. Uses the embedded Fashion-MNIST subset: the teacher on all 5,000 training
# images, the students on 1,000 (a small-data task, where DearKD is meant to help); 1,000 test images. About
# 5 minutes on 2 CPU cores. DEMO_OUTPUT_DIR, DEMO_TEACHER_EPOCHS, DEMO_EPOCHS, DEMO_TRAIN_FRACTION,
# DEMO_MAX_EVAL_SAMPLES and DEMO_SEEDS override the sizes (the tests use tiny ones).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUTPUT_DIR:-outputs/demo}
TEACHER_EPOCHS=${DEMO_TEACHER_EPOCHS:-3}
EPOCHS=${DEMO_EPOCHS:-20}
FRACTION=${DEMO_TRAIN_FRACTION:-0.2}  # of each class, stratified: 1,000 images
EVAL_SAMPLES=${DEMO_MAX_EVAL_SAMPLES:-1000}
SEEDS=${DEMO_SEEDS:-0 1}  # each student row once per seed: same initialisation and batches across rows of a seed
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
COMMON=(--image_size 28 --report_to none --save_strategy no --eval_strategy no --logging_steps 20
        --per_device_train_batch_size 64 --per_device_eval_batch_size 256 --dataloader_num_workers 0
        --disable_tqdm true --log_level warning --max_eval_samples "$EVAL_SAMPLES")

# run NAME COMMAND...: a fresh run into $OUT/NAME, its wall time beside its results.
run() {
  local name=$1 start
  shift
  rm -rf "${OUT:?}/$name"
  start=$(date +%s)
  "$@" --output_dir "$OUT/$name" "${COMMON[@]}"
  echo $(( $(date +%s) - start )) > "$OUT/$name/wall_s"
}

run teacher python examples/train_teacher.py --model_name_or_path resnet18 --num_train_epochs "$TEACHER_EPOCHS" \
  --learning_rate 2e-3 --seed 0

# One student, one schedule; only the objective differs.
STUDENT=(python examples/run.py --teacher_model_name_or_path "$OUT/teacher" --model_type dearkd_vit
         --config_overrides "patch_size=4,hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128"
         --train_fraction "$FRACTION" --num_train_epochs "$EPOCHS" --learning_rate 1e-3 --weight_decay 0.05
         --warmup_steps 10)
for SEED in $SEEDS; do
  run "labels_only_s$SEED" "${STUDENT[@]}" --seed "$SEED" --distillation_stop_epoch 0   # the ViT alone: no teacher
  run "deit_kd_s$SEED" "${STUDENT[@]}" --seed "$SEED" --beta 0 --distillation_stop_epoch "$EPOCHS"  # DeiT, to the end
  run "dearkd_s$SEED" "${STUDENT[@]}" --seed "$SEED"                                    # DearKD, at its defaults
done

python - "$OUT" $SEEDS <<'PY'
import json, pathlib, sys
out, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
rows = {
    "teacher": "CNN teacher (timm resnet18, 5,000 images)",
    "labels_only": "ViT student without a teacher",
    "deit_kd": "ViT student, DeiT-style logit KD",
    "dearkd": "ViT student, DearKD",
}
accuracy, wall = {}, {}
for name in rows:
    folders = [out / name] if name == "teacher" else [out / f"{name}_s{seed}" for seed in seeds]
    accuracy[name] = [json.loads((f / "all_results.json").read_text())["eval_accuracy"] for f in folders]
    wall[name] = sum(int((f / "wall_s").read_text()) for f in folders)
print(f"\n| model | eval accuracy (mean of {len(seeds)} seeds) | per seed | wall time (s) |\n|---|---|---|---|")
for name, title in rows.items():
    values = accuracy[name]
    mean = sum(values) / len(values)
    print(f"| {title} | {mean:.4f} | {', '.join(f'{v:.4f}' for v in values)} | {wall[name]} |")
gains = [d - k for d, k in zip(accuracy["dearkd"], accuracy["deit_kd"])]
spread = max(accuracy["deit_kd"]) - min(accuracy["deit_kd"])
print(
    f"\nDearKD - DeiT KD, paired by seed: {', '.join(f'{g:+.4f}' for g in gains)} (mean {sum(gains) / len(gains):+.4f}); "
    f"DeiT KD's own range over seeds: {spread:.4f}."
)
PY
