"""Group `train`: training throughput of the carried-state layout, Keras settings
side by side, and PyTorch's `nn.LSTM` on the same model when it is installed.

Every contender trains the default model (LSTM(128) + Dense(36) softmax, Adam
2e-3 with gradients clipped to [-1, 1]) on the same `StreamBatches` of tiny
Shakespeare (32 streams, 16 steps a batch, one-hot float32, a target at every
step), from the same initial weights. A round starts from those weights and a
fresh optimizer (untimed) and trains STEPS steps after a warm-up that traced the
graph; afterwards the round's mean loss must equal the plain-`fit` reference's
(an untimed run of its own) within TOLERANCE: the settings change the speed,
not the training.
"""
import keras
import numpy as np
import pytest

from _shared import record_rate

BATCH, SEQ, STEPS = 32, 16, 256
# Unrolled, XLA-compiled and PyTorch graphs sum in other orders: after 256 steps
# their mean losses differ from the plain loop's by about 1e-5 (measured); a
# contender that trained something else would be off by far more.
TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def stream_batches(corpus_ids):
    from charstream.training.batches import StreamBatches

    split = int(len(corpus_ids) * 0.9)
    return StreamBatches(corpus_ids[:split], BATCH, SEQ, 36, seed=0)


@pytest.fixture(scope="module")
def initial_weights():
    from charstream.model import build_stream_model

    keras.utils.set_random_seed(0)
    return build_stream_model(BATCH, SEQ).get_weights()


class KerasRun:
    """A stream model compiled with one contender's settings, restorable to the
    same initial weights and optimizer state before every round."""

    def __init__(self, settings: dict, weights, batches):
        from charstream.model import build_stream_model

        self.model = build_stream_model(BATCH, SEQ, unroll=settings["unroll"],
                                        steps_per_execution=settings["steps_per_execution"],
                                        learning_rate=2e-3)
        if settings.get("jit_compile"):
            self.model.compile(
                optimizer=keras.optimizers.Adam(2e-3, clipvalue=1.0),
                loss="sparse_categorical_crossentropy",
                steps_per_execution=settings["steps_per_execution"], jit_compile=True)
        self.weights = weights
        self.batches = _AsBool(batches) if settings.get("bool_input") else batches
        self.model.optimizer.build(self.model.trainable_variables)
        self.fresh_optimizer = [v.numpy() for v in self.model.optimizer.variables]
        self.train(32)  # traces the graph (untimed)

    def restore(self):
        from charstream.model import reset_states

        self.model.set_weights(self.weights)
        for v, value in zip(self.model.optimizer.variables, self.fresh_optimizer):
            v.assign(value)
        reset_states(self.model)

    def train(self, steps=STEPS) -> float:
        self.restore()
        history = self.model.fit(self.batches, epochs=1, steps_per_epoch=steps, verbose=0,
                                 shuffle=False, callbacks=[self.batches.epoch_callback()])
        return history.history["loss"][0]


class _AsBool(keras.utils.PyDataset):
    """The same batches with bool inputs (what the Cython kernel wrote before
    charstream switched to float32)."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        X, Y = self.batches[index]
        return X.astype(bool), Y

    def epoch_callback(self):
        return self.batches.epoch_callback()


class TorchRun:
    """The same model, data and initial weights in PyTorch: `nn.LSTM` (gates in
    the same i, f, g, o order as Keras) and `nn.Linear`, each gradient value
    clipped to [-1, 1], the state carried (detached) from batch to batch, and
    Keras's Adam update written out (torch's puts epsilon inside the bias
    correction, which trains measurably differently over 256 steps)."""

    def __init__(self, weights, batches):
        import torch

        self.torch, self.batches = torch, batches
        kernel, recurrent, bias, dense_w, dense_b = weights
        self.lstm = torch.nn.LSTM(36, 128, batch_first=True)
        self.dense = torch.nn.Linear(128, 36)
        # Keras's LSTM has one bias; torch's two (ih and hh) add up. The second
        # stays zero and frozen, or the bias would learn at twice the rate.
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        self.fresh = [torch.tensor(kernel.T), torch.tensor(recurrent.T), torch.tensor(bias),
                      torch.tensor(dense_w.T), torch.tensor(dense_b)]
        self.params = [self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0,
                       self.dense.weight, self.dense.bias]
        batches.set_epoch(0)
        self.data = [batches[k] for k in range(STEPS)]  # built once: time the training
        self.train(8)

    def train(self, steps=STEPS) -> float:
        torch = self.torch
        with torch.no_grad():
            for p, value in zip(self.params, self.fresh):
                p.copy_(value)
        m = [torch.zeros_like(p) for p in self.params]
        v = [torch.zeros_like(p) for p in self.params]
        state, losses = None, []
        for t, (X, Y) in enumerate(self.data[:steps], start=1):
            out, state = self.lstm(torch.from_numpy(X), state)
            state = tuple(s.detach() for s in state)
            logits = self.dense(out)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 36), torch.from_numpy(Y).reshape(-1).long())
            for p in self.params:
                p.grad = None
            loss.backward()
            alpha = 2e-3 * (1 - 0.999 ** t) ** 0.5 / (1 - 0.9 ** t)
            with torch.no_grad():  # keras.optimizers.Adam, clipvalue=1.0
                for p, m_, v_ in zip(self.params, m, v):
                    g = p.grad.clamp(-1.0, 1.0)
                    m_.mul_(0.9).add_(g, alpha=0.1)
                    v_.mul_(0.999).addcmul_(g, g, value=0.001)
                    p.sub_(alpha * m_ / (v_.sqrt() + 1e-7))
            losses.append(loss.item())
        return float(np.mean(losses))


@pytest.fixture(scope="module")
def reference_loss(plain_fit_settings, initial_weights, stream_batches):
    """The plain `fit` contender's mean loss over STEPS steps, from its own run."""
    return KerasRun(plain_fit_settings, initial_weights, stream_batches).train()


@pytest.mark.benchmark(group="train: carried-state steps (32 streams x 16, LSTM 128)")
def test_training_throughput(benchmark, train_contender, initial_weights, stream_batches,
                             reference_loss):
    name, settings = train_contender
    benchmark.extra_info["contender"] = name
    if settings is None:  # "torch-nn.LSTM"
        pytest.importorskip("torch")
        run = TorchRun(initial_weights, stream_batches)
    else:
        run = KerasRun(settings, initial_weights, stream_batches)
    loss = benchmark.pedantic(run.train, rounds=3)
    record_rate(benchmark, STEPS * BATCH * SEQ, "targets/s")
    benchmark.extra_info["mean loss"] = round(loss, 6)
    assert loss == pytest.approx(reference_loss, abs=TOLERANCE)
