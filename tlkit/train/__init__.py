"""Fine-tuning: stages of fit() over one model, with schedules, callbacks and resume.

- `run`: `finetune` and `FineTuneRun`, the run as an object with small steps
  (prepare -> stages -> evaluate -> finish);
- `schedules`: `WarmupSchedule` (registered as "tlkit>WarmupSchedule", so checkpoints load), `make_optimizer`;
- `callbacks`: history.csv, best checkpoint, resume point, NaN stop, epoch log and estimate;
- `features`: the cached-features head stage.
"""

from tlkit.train.schedules import WarmupSchedule, make_optimizer
from tlkit.train.run import FineTuneRun, RunResult, finetune

__all__ = ["FineTuneRun", "RunResult", "WarmupSchedule", "finetune", "make_optimizer"]
