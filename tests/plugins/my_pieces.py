"""Collapse pieces and a preset from a plugin file (used by tests/test_extending.py).

- `entropy`: adds weight * (mean entropy of the mixing weights' rows) to what the alphas
  minimise, the weight rising linearly from 0 to `weight` over the search (a per-epoch
  schedule), and counts its alpha steps (state that a resumed search must get back);
- `trace`: every hook, each call noted in `CALLS`; it stops the search after epoch `stop_at`;
- `--method sharp-darts`: first order with `entropy`.
"""


from darts.methods.pieces import Piece, register_piece
from darts.methods.presets import register_preset

CALLS: list[str] = []


@register_piece("entropy", overwrite=True)
class EntropyPenalty(Piece):
    def __init__(self, weight: float = 1.0):
        self.weight, self.current, self.steps = float(weight), 0.0, 0

    def start_epoch(self, epoch, epochs):
        self.current = self.weight * epoch / max(1, epochs - 1)
        return {"entropy_weight": self.current}

    def arch_loss(self, model):
        self.steps += 1
        rows = model.mixing_weights()[:2]
        entropy = [-(w * w.clamp_min(1e-12).log()).sum(-1).mean() for w in rows]
        return self.current * sum(entropy) / len(entropy)

    def record(self, record):
        record["entropy_steps"] = self.steps

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])


@register_piece("trace", overwrite=True)
class Trace(Piece):
    def __init__(self, stop_at: int = 0):
        self.stop_at = stop_at

    def _note(self, hook):
        if hook not in CALLS:
            CALLS.append(hook)

    def prepare(self, model):
        self._note("prepare")

    def attach(self, model, cells):
        self._note("attach")

    def start_epoch(self, epoch, epochs):
        self._note("start_epoch")
        return {}

    def transform(self, weights):
        self._note("transform")
        return weights

    def arch_loss(self, model):
        self._note("arch_loss")
        return model.arch_parameters()[0].sum() * 0.0

    def freezes_alphas(self):
        self._note("freezes_alphas")
        return False

    def after_alpha_step(self, batch, architect):
        self._note("after_alpha_step")

    def weight_step_weights(self, weights):
        self._note("weight_step_weights")
        return weights

    def decode(self, model, cells, meta):
        self._note("decode")
        return None

    def record(self, record):
        self._note("record")

    def stop(self, history):
        self._note("stop")
        return f"trace stops after epoch {self.stop_at}" if len(history) == self.stop_at else None

    def after_search(self):
        self._note("after_search")

    def state_dict(self):
        self._note("state_dict")
        return {"calls": len(CALLS)}

    def load_state_dict(self, state):
        self._note("load_state_dict")


register_preset("sharp-darts", {
    "order": (1, "a first-order alpha step"),
    "pieces": (("entropy:weight=0.5",), "tests/plugins/my_pieces.py: the entropy penalty"),
}, overwrite=True)
