# Sourced by the bench/gpu_*.sh scripts that measure the Mistral-7B shape: the GPU environment
# (gpu_env.sh), the shaped model built once from SmolLM2's tokenizer ($S), the GPU's name in $OUT/gpu.txt.
source bench/gpu_env.sh
S=/tmp/models/SmolLM2-135M-Instruct
[ -d /tmp/models/m7b ] || python3 bench/make_shaped_model.py mistral7b $S /tmp/models/m7b > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt

# a cold kernel cache costs minutes in either tool: a short run of both compiles the kernels once
# (arguments: more bench_train.py flags, e.g. the columns the measuring run will have)
warm7b() {
  python3 bench/bench_train.py --model /tmp/models/m7b --keep-dtype --samples 32 --batch-size 4 \
    --num-layers 16 --max-seq-length 512 --repeats 1 --epochs 2 "$@" 2>&1 | tail -9 | tee $OUT/warm.txt
}
