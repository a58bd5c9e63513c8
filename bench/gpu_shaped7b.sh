# Sourced by the bench/gpu_*.sh scripts that measure the Mistral-7B shape: the GPU environment
# (gpu_env.sh), the shaped model built once from SmolLM2's tokenizer ($S), the GPU's name in $OUT/gpu.txt.
source bench/gpu_env.sh
S=/tmp/models/SmolLM2-135M-Instruct
[ -d /tmp/models/m7b ] || python3 bench/make_shaped_model.py mistral7b $S /tmp/models/m7b > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
