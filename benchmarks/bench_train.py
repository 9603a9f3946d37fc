"""Group `train`: training throughput of the carried-state layout, Keras settings
side by side, and PyTorch's `nn.LSTM` on the same model when it is installed.

Every contender trains the default model (LSTM(128) + Dense(36) softmax, Adam
2e-3 with gradients clipped to [-1, 1]) on the same first 256 `StreamBatches` of
tiny Shakespeare (32 streams, 16 steps a batch, one-hot float32, a target at every
step; `StreamChunks` of 32 of them as ids for the chunked contenders), built once
before timing, from the same initial weights. A round starts from those weights and a
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
CHUNK = 32  # batches per item of `StreamChunks` (charstream's --steps-per-execution)
# Unrolled and XLA-compiled graphs sum in other orders: after 256 steps their
# mean losses differ from the plain loop's by about 1e-5 (measured); a contender
# that trained something else would be off by far more.
TOLERANCE = 2e-4
# torch.optim.Adam places epsilon after the bias correction (Keras: 1e-7 before
# it, so Keras's is 1e-7 / sqrt(1 - 0.999**t) in torch's terms, 3e-6 at step 1):
# its 256-step mean loss is 8.0e-4 above Keras's (measured: 2.69180 against
# 2.69100), which this bound allows with a margin of 2.5.
TORCH_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def stream_batches(corpus_ids):
    from charstream.training.batches import StreamBatches

    split = int(len(corpus_ids) * 0.9)
    return StreamBatches(corpus_ids[:split], BATCH, SEQ, 36, seed=0)


@pytest.fixture(scope="module")
def stream_chunks(corpus_ids):
    """The same streams, 32 batches an item (what `python -m charstream.train` fits)."""
    from charstream.training.batches import StreamChunks

    split = int(len(corpus_ids) * 0.9)
    return StreamChunks(corpus_ids[:split], BATCH, SEQ, 36, CHUNK, seed=0)


@pytest.fixture(scope="module")
def initial_weights():
    from charstream.model import build_stream_model

    keras.utils.set_random_seed(0)
    return build_stream_model(BATCH, SEQ).get_weights()


def premade(items, bool_input=False):
    """`items` (a list of `(X, Y)`) as a `tf.data.Dataset`, built once, as the
    torch contender's are: every contender times the training, not the batching.

    tf.data's autotuning is off: with it, one `fit` call in four or so returned
    2.2-2.6 s after its last step (`on_train_end`), waiting for the dataset's
    teardown (measured: 2 of 8 rounds with it, 0 of 8 without), which timed the
    teardown rather than the training."""
    import tensorflow as tf

    X = np.stack([x for x, _ in items])
    Y = np.stack([y for _, y in items])
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensor_slices((X.astype(bool) if bool_input else X, Y)
                                              ).with_options(options)


class KerasRun:
    """A stream model compiled with one contender's settings, restorable to the
    same initial weights and optimizer state before every round."""

    def __init__(self, settings: dict, weights, batches, chunks):
        from charstream.model import build_stream_model
        from charstream.training.steps import train_in_chunks

        self.model = build_stream_model(BATCH, SEQ, unroll=settings["unroll"],
                                        steps_per_execution=settings["steps_per_execution"],
                                        learning_rate=2e-3)
        self.per_item = 1
        if settings.get("unrolled"):  # charstream's LSTM loop (stream mode's fit)
            from charstream.training import fused
            from charstream.training.unrolled import unroll_lstms

            if settings["fused"] and fused.library() is None:
                pytest.skip("the fused LSTM op did not build (see the warning)")
            unroll_lstms(self.model, settings["fused"])
        if settings.get("chunks"):  # what charstream's fit does in stream mode
            train_in_chunks(self.model, 36, settings.get("jit_compile", False))
            batches, self.per_item = chunks, CHUNK
        elif settings.get("jit_compile"):
            self.model.compile(
                optimizer=keras.optimizers.Adam(2e-3, clipvalue=1.0),
                loss="sparse_categorical_crossentropy",
                steps_per_execution=settings["steps_per_execution"], jit_compile=True)
        batches.set_epoch(0)
        # bool input: the graph casts (oneDNN prints "supports DT_BOOL only on
        # platforms with AVX-512"); what the Cython kernel wrote before float32
        self.data = premade([batches[k] for k in range(STEPS // self.per_item)],
                            settings.get("bool_input", False))
        self.weights = weights
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
        history = self.model.fit(self.data, epochs=1, steps_per_epoch=steps // self.per_item,
                                 verbose=0, shuffle=False)
        return history.history["loss"][0]


class TorchRun:
    """The same model, data and initial weights in PyTorch, written as its users
    write it: `nn.LSTM` (gates in the same i, f, g, o order as Keras) and
    `nn.Linear`, `torch.optim.Adam(params, lr)`, `clip_grad_value_(params, 1.0)`,
    the state carried (detached) from batch to batch, `loss.item()` each step.

    torch's Adam adds epsilon to the bias-corrected root (Keras: to the raw
    root, 1e-7); with torch's defaults the 256-step mean loss stays within
    `TORCH_TOLERANCE` of Keras's (recorded as "mean loss")."""

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
        optimizer = torch.optim.Adam(self.params, lr=2e-3)   # a fresh optimizer per round
        state, losses = None, []
        for X, Y in self.data[:steps]:
            out, state = self.lstm(torch.from_numpy(X), state)
            state = tuple(s.detach() for s in state)
            loss = torch.nn.functional.cross_entropy(
                self.dense(out).reshape(-1, 36), torch.from_numpy(Y).reshape(-1).long())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(self.params, 1.0)
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))


@pytest.fixture(scope="module")
def reference_loss(plain_fit_settings, initial_weights, stream_batches, stream_chunks):
    """The plain `fit` contender's mean loss over STEPS steps, from its own run."""
    return KerasRun(plain_fit_settings, initial_weights, stream_batches, stream_chunks).train()


@pytest.mark.benchmark(group="train: carried-state steps (32 streams x 16, LSTM 128)")
def test_training_throughput(benchmark, train_contender, initial_weights, stream_batches,
                             stream_chunks, reference_loss):
    name, settings = train_contender
    benchmark.extra_info["contender"] = name
    if settings is None:  # "torch-nn.LSTM"
        pytest.importorskip("torch")
        run = TorchRun(initial_weights, stream_batches)
    else:
        run = KerasRun(settings, initial_weights, stream_batches, stream_chunks)
    loss = benchmark.pedantic(run.train, rounds=3)
    record_rate(benchmark, STEPS * BATCH * SEQ, "targets/s")
    benchmark.extra_info["mean loss"] = round(loss, 6)
    bound = TORCH_TOLERANCE if settings is None else TOLERANCE
    assert loss == pytest.approx(reference_loss, abs=bound)
