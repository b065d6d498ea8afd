#!/usr/bin/env bash
# The whole pipeline on one CPU, end to end, in about 15 minutes on 2 cores: the datasets, AIME
# (phase 1 and phase 2), BCO(0), IIDM and the BC oracle on the same data, V-MAIL's learner in
# AIME's world model, and the table of normalised scores. The cell is cartpole-swingup from
# positions alone (LPOMDP: the cart's position and the pole's angle, no velocities) at the AIME
# authors' cartpole action repeat of 8, with embodiment data of random actions only: an inverse
# dynamics model cannot tell an action from two positions, a world model that filters the history
# can (docs/benchmark.md, "The quick start's cell"). Every step is one of the CPU benchmark's
# commands (`python grid.py --cpu`) at seed 1 with its budgets (grid.py's CPU_DATA and CPU_ARGS;
# tests/test_grid.py checks they agree); re-running the script continues (or re-evaluates) what is
# already there.
#
#   bash quickstart.sh                       # datasets/quickstart/, runs/quickstart/
#   DATA=/tmp/d RUNS=/tmp/r bash quickstart.sh
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-datasets/quickstart}
RUNS=${RUNS:-runs/quickstart}
TASK=(--env cartpole --task swingup)

# 1. Embodiment data: 20 episodes of uniform random actions (cartpole-random/), from
#    cartpole-balance's initial states (the pole starts near upright and falls, so the random
#    data see the pole all round its circle; from swingup's, hanging, it would hardly move).
python dreamer_collect.py --agent random --env cartpole --task balance --action-repeat 8 \
    --num-trajectories 20 --no-render --data-dir "$DATA"

# 2. The demonstrations: 20 episodes of a scripted swing-up controller (cartpole-swingup-expert/,
#    mean return in info.json; dreamer_collect.py::cartpole_swingup_expert). Dreamer learns this
#    task too, but not in minutes on a CPU.
python dreamer_collect.py --agent scripted "${TASK[@]}" --action-repeat 8 --num-demos 20 \
    --no-render --data-dir "$DATA"

# 3. AIME: the world model on the random data (in the original-Dreamer layout, the AIME authors'
#    default for every domain but walker), then the policy from the demonstrations' positions
#    alone; evaluated on 10 episodes. 2,000 phase-1 steps (the paper's: 100,000) at the paper's
#    text's learning rate 1e-3 (the authors' 3e-4 learns too slowly for so short a phase 1).
python aime.py "${TASK[@]}" --body-data random --demo swingup --obs lpomdp --num-demos 20 \
    --phase1-epochs 20 --phase2-epochs 15 --steps-per-epoch 100 --batch-size 16 --horizon 32 \
    --lr 1e-3 --eval-episodes 10 --eval-every 0 --data-dir "$DATA" --runs-dir "$RUNS" --resume-or-start

# 4. The baselines on the same data, at the authors' schedule (bco0.py): BCO(0), IIDM (a forward
#    model as implicit IDM) and the BC oracle (the demonstrations' true actions, no body data).
for method in bco0 iidm bc; do
  python bco0.py "${TASK[@]}" --method $method --body-data random --demo swingup --obs lpomdp \
      --num-demos 20 --eval-episodes 10 --data-dir "$DATA" --runs-dir "$RUNS" --resume-or-start
done

# 5. V-MAIL on the same footing (vmail_obs.py): its discriminator and policy learn inside AIME's
#    frozen world model from the same demonstrations' positions, at the settings under which
#    V-MAIL imitated online on cartpole (docs/vmail.md: faster learning rates than the authors',
#    the input gradient penalty, rollouts of 5 steps) and AIME's phase-2 budget.
python vmail_obs.py "${TASK[@]}" --demo swingup --obs lpomdp --num-demos 20 \
    --world-model "$RUNS/cartpole-swingup__lpomdp__random__swingup__aime__1/world_model.pt" \
    --phase2-epochs 15 --steps-per-epoch 100 --batch-size 16 --horizon 32 --hidden 64 \
    --disc-lr 1e-3 --actor-lr 3e-4 --value-lr 3e-4 --grad-penalty inputs --imag-horizon 5 \
    --eval-episodes 10 --eval-every 0 --data-dir "$DATA" --runs-dir "$RUNS" --resume-or-start

# 6. The table (also written to $RUNS/results.md and results.png), and the random policy's score
#    on the same scale: uniform actions from the AIME run's evaluation states (its results.json).
python results_table.py --runs-dir "$RUNS"
python - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path
r = json.loads(next(Path(sys.argv[1]).glob("*__aime__1/results.json")).read_text())
print(f"random policy: return {r['random_return']:.1f}, normalised score "
      f"{r['random_normalised_score']:.1f} on the same initial states (expert return "
      f"{r['expert_return']:.1f})")
EOF
