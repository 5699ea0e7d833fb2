"""train.py under a distributed launcher, recording which questions each process trained on.

    torchrun --nproc_per_node 2 tests/distributed_train_driver.py RECORD_DIR TRAIN_ARGS...

Each process appends one line per training batch to RECORD_DIR/rank-R.jsonl: the batch's answers. Nothing else of
train.py changes; the tests read the records to check which process saw which questions.
"""
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import train  # noqa: E402
from reasoncd.training.dataset import ReasonCDCollator  # noqa: E402


def recording(collate, record: Path):
    def collate_and_record(self, batch):
        if all("questions" in item for item in batch):  # training rows are pairs; validation passes samples
            with record.open("a") as log:
                log.write(json.dumps([answer for item in batch for answer in item["answers"]]) + "\n")
        return collate(self, batch)
    return collate_and_record


if __name__ == "__main__":
    record_dir = Path(sys.argv[1])
    record_dir.mkdir(parents=True, exist_ok=True)
    ReasonCDCollator.__call__ = recording(ReasonCDCollator.__call__, record_dir / f"rank-{os.environ['RANK']}.jsonl")
    sys.exit(train.main(sys.argv[2:]))
