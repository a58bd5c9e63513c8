set -e
source bench/gpu_env.sh
mkdir -p /tmp/t
(cd tests && python3 -c "
from tiny_model import build_tiny_model, write_chat_data
from enginetools import base_config
import yaml
m=build_tiny_model('/tmp/t/model'); d=write_chat_data('/tmp/t/data', n_train=23)
yaml.safe_dump(base_config(m,d,iters=6,batch_size=4,save_every=3), open('/tmp/t/c.yaml','w'))
") 2>&1 | grep -v Warn | tail -3
tic=$(date +%s)
timeout 200 python3 -m farense_tui.cli train --config /tmp/t/c.yaml --run-dir /tmp/t/r2 -n 2 --backend nccl 2>&1 | tail -6 | tee $OUT/smoke.txt
echo "smoke took $(( $(date +%s) - tic )) s"
grep -o '"ranks":\[[^]]*\]' /tmp/t/r2/events.jsonl | tail -1 | tee -a $OUT/smoke.txt
