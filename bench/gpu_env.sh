# Sourced by the bench/gpu_*.sh scripts on the lent GPU: unpacks the carried wheels and model once
# (parts a-c copied to /root/stash by earlier calls, part d carried in .gpu/), then sets the paths.
mkdir -p /tmp/blob /tmp/models $OUT
if [ ! -d /tmp/site/mlx ]; then
  cat /root/stash/part.aa /root/stash/part.ab /root/stash/part.ac .gpu/p_part.ad/part.ad | tar -x -C /tmp/blob
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/blob/*.whl
  mv /tmp/blob/SmolLM2-135M-Instruct /tmp/models/
fi
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib:$SP/nvidia/nccl/lib
