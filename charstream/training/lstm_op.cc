// A whole LSTM sequence, forward and back, as two TensorFlow ops: what stream-mode
// training runs in place of Keras's cell step by step (charstream/training/fused.py
// compiles this file against the installed TensorFlow on first use and gives the
// pair its gradient).
//
// Why: the chunk step with TensorFlow's own ops runs about 60 ops per LSTM step
// (forward and back), each a trip through TensorFlow's executor, and its two
// inter-op threads overlap little of it (1.12 of 2 cores busy in a profile,
// docs/training.md). Here a sequence is two ops: each splits the batch's streams
// into `shards` independent groups run side by side on TensorFlow's inter-op
// threads (a stream's steps depend on each other, different streams do not), and
// each group runs its steps with Eigen's matrix products and vectorised
// activations.
//
// Layout (gates in Keras's order i, f, g, o; batch-major, as Keras's LSTM):
//   x         (batch, steps, inputs)   the layer's input
//   h0, c0    (batch, units)           the carried state
//   kernel    (inputs, 4 units)        W
//   recurrent (units, 4 units)         U
//   bias      (4 units)                b
//   h, c      (batch, steps, units)    every step's state
//   gates     (batch, steps, 4 units)  every step's i, f, g, o after activation
// The backward op takes the loss's gradient for every h and for the last c and
// returns the gradients for x (when asked: a model's input needs none), W, U, b,
// h0 and c0.
//
// The input projection x @ W runs in here too: TensorFlow's matmul of a
// (batch * steps, 36) one-hot input took 236 us a batch and its gradient 192 us
// (profile_step.py --loop fused, before the move). A one-hot row times W is one
// row of W, so when x has at most one non-zero per row on average (the first
// layer's one-hot input, dropout or not) the op adds the rows of W its non-zeros
// pick and scatters the gradient back to them; otherwise (a second layer's input)
// it multiplies. Either way the sums are the same products (a one-hot row's
// product is exact), only the order of the gradient's sums differs.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
using ConstStrided = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;

// Rows [first, first + rows) of step `t` of a (batch, steps, width) tensor.
ConstStrided step_of(const float* base, int64_t first, int64_t rows, int64_t steps,
                     int64_t t, int64_t width) {
  return ConstStrided(base + (first * steps + t) * width, rows, width,
                      Eigen::OuterStride<>(steps * width));
}
Strided step_of(float* base, int64_t first, int64_t rows, int64_t steps, int64_t t,
                int64_t width) {
  return Strided(base + (first * steps + t) * width, rows, width,
                 Eigen::OuterStride<>(steps * width));
}
ConstStrided rows_of(const float* base, int64_t first, int64_t rows, int64_t width) {
  return ConstStrided(base + first * width, rows, width, Eigen::OuterStride<>(width));
}

// Runs shard(k) for k in [0, shards) on TensorFlow's inter-op threads: the
// other shards are offered to the pool (`ctx->runner()`) and the calling thread
// takes shards too, from the same counter, until none is left, then waits for the
// ones other threads took. No extra threads compete with TensorFlow's for the
// cores, and no wait can deadlock: a shard nobody took is run by the caller. An
// offer that reaches a thread after every shard was taken does nothing (it holds
// the counter, never the caller's frame).
void run_shards(OpKernelContext* ctx, int shards, const std::function<void(int)>& shard) {
  struct Work {
    std::atomic<int> next{0};
    int finished = 0;
    std::mutex lock;
    std::condition_variable done;
    const std::function<void(int)>* shard;
    int shards;
    // Takes and runs shards until none is left.
    void take() {
      for (int k; (k = next.fetch_add(1)) < shards;) {
        (*shard)(k);
        std::lock_guard<std::mutex> hold(lock);
        if (++finished == shards) done.notify_all();
      }
    }
  };
  if (shards == 1) return shard(0);
  auto work = std::make_shared<Work>();
  work->shard = &shard;
  work->shards = shards;
  for (int k = 1; k < shards; ++k) (*ctx->runner())([work] { work->take(); });
  work->take();
  std::unique_lock<std::mutex> hold(work->lock);
  work->done.wait(hold, [&] { return work->finished == shards; });
}

// The first stream and the number of streams of shard k of `shards` over `batch`.
void shard_rows(int64_t batch, int shards, int k, int64_t* first, int64_t* rows) {
  const int64_t base = batch / shards, extra = batch % shards;
  *first = k * base + std::min<int64_t>(k, extra);
  *rows = base + (k < extra ? 1 : 0);
}

tensorflow::Status check_state(const Tensor& t, const char* name, int64_t batch,
                               int64_t units) {
  if (t.dims() != 2 || t.dim_size(0) != batch || t.dim_size(1) != units)
    return InvalidArgument(name, ": expected shape (", batch, ", ", units, "), got ",
                           t.shape().DebugString());
  return tensorflow::OkStatus();
}

tensorflow::Status check_sequence(const Tensor& t, const char* name, int64_t batch,
                                  int64_t steps, int64_t width) {
  if (t.dims() != 3 || t.dim_size(0) != batch || t.dim_size(1) != steps ||
      t.dim_size(2) != width)
    return InvalidArgument(name, ": expected shape (", batch, ", ", steps, ", ", width,
                           "), got ", t.shape().DebugString());
  return tensorflow::OkStatus();
}

// Checks x, W, U and b against each other; returns (batch, steps, inputs, units).
tensorflow::Status check_weights(const Tensor& x, const Tensor& kernel, const Tensor& recurrent,
                                 const Tensor& bias, int64_t* batch, int64_t* steps,
                                 int64_t* inputs, int64_t* units) {
  if (recurrent.dims() != 2 || recurrent.dim_size(0) == 0 ||
      recurrent.dim_size(1) != 4 * recurrent.dim_size(0))
    return InvalidArgument("recurrent: expected shape (units, 4 units), got ",
                           recurrent.shape().DebugString());
  *units = recurrent.dim_size(0);
  if (x.dims() != 3 || x.dim_size(1) == 0)
    return InvalidArgument("x: expected shape (batch, steps >= 1, inputs), got ",
                           x.shape().DebugString());
  *batch = x.dim_size(0);
  *steps = x.dim_size(1);
  *inputs = x.dim_size(2);
  if (kernel.dims() != 2 || kernel.dim_size(0) != *inputs || kernel.dim_size(1) != 4 * *units)
    return InvalidArgument("kernel: expected shape (", *inputs, ", ", 4 * *units, "), got ",
                           kernel.shape().DebugString());
  if (bias.dims() != 1 || bias.dim_size(0) != 4 * *units)
    return InvalidArgument("bias: expected shape (", 4 * *units, "), got ",
                           bias.shape().DebugString());
  return tensorflow::OkStatus();
}

// Whether x has at most one non-zero per row on average: a one-hot input.
bool is_sparse(const Tensor& x) {
  const auto flat = x.flat<float>();
  const int64_t rows = x.dim_size(0) * x.dim_size(1);
  int64_t nonzero = 0;
  for (int64_t k = 0; k < flat.size(); ++k) nonzero += flat(k) != 0.0f;
  return nonzero <= rows;
}

// The tensors of one call, as pointers, with their sizes (layout at the top).
struct Sequence {
  int64_t batch, steps, inputs, units;
  bool sparse;   // x has at most one non-zero per row on average (one-hot)
  const float *x, *h0, *c0, *kernel, *recurrent, *bias;
};

// Steps 0 .. steps - 1 of streams [first, first + rows): every step's gates (after
// activation), c and h.
void forward_shard(const Sequence& q, int64_t first, int64_t rows, float* gates, float* c,
                   float* h) {
  const int64_t u = q.units, n = q.inputs, steps = q.steps;
  Eigen::Map<const Matrix> W(q.kernel, n, 4 * u), U(q.recurrent, u, 4 * u);
  Eigen::Map<const Eigen::RowVectorXf> b(q.bias, 4 * u);
  for (int64_t t = 0; t < steps; ++t) {
    Strided z = step_of(gates, first, rows, steps, t, 4 * u);   // (rows, 4 units)
    ConstStrided h_prev = t ? step_of(static_cast<const float*>(h), first, rows, steps, t - 1, u)
                            : rows_of(q.h0, first, rows, u);
    ConstStrided c_prev = t ? step_of(static_cast<const float*>(c), first, rows, steps, t - 1, u)
                            : rows_of(q.c0, first, rows, u);
    z.noalias() = h_prev * U;
    if (q.sparse) {   // + x @ W, a row of W for each non-zero
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = q.x + ((first + r) * steps + t) * n;
        for (int64_t j = 0; j < n; ++j)
          if (xr[j] != 0.0f) z.row(r) += xr[j] * W.row(j);
      }
    } else {
      z.noalias() += step_of(q.x, first, rows, steps, t, n) * W;
    }
    z.rowwise() += b;
    z.leftCols(2 * u).array() = z.leftCols(2 * u).array().logistic();   // i, f
    z.middleCols(2 * u, u).array() = z.middleCols(2 * u, u).array().tanh();   // g
    z.rightCols(u).array() = z.rightCols(u).array().logistic();   // o
    Strided c_t = step_of(c, first, rows, steps, t, u);
    c_t.array() = z.middleCols(u, u).array() * c_prev.array() +
                  z.leftCols(u).array() * z.middleCols(2 * u, u).array();
    step_of(h, first, rows, steps, t, u).array() = z.rightCols(u).array() * c_t.array().tanh();
  }
}

// What the backward op reads besides the inputs: the forward op's results and the
// loss's gradients.
struct Saved {
  const float *gates, *c, *h, *dh, *dc_last;
};

// Steps steps - 1 .. 0 of streams [first, first + rows): every step's dz (the
// gradient for the gates' inputs) and the gradients for h0 and c0.
void backward_steps(const Sequence& q, const Saved& s, const Matrix& Ut, int64_t first,
                    int64_t rows, float* dz_all, float* dh0, float* dc0) {
  const int64_t u = q.units, steps = q.steps;
  Matrix dh_next = Matrix::Zero(rows, u);                 // (rows, units)
  Matrix dc_next = rows_of(s.dc_last, first, rows, u);
  Matrix d_h(rows, u), d_c(rows, u), tanh_c(rows, u);
  for (int64_t t = steps - 1; t >= 0; --t) {
    ConstStrided a = step_of(s.gates, first, rows, steps, t, 4 * u);
    auto i = a.leftCols(u).array(), f = a.middleCols(u, u).array(),
         g = a.middleCols(2 * u, u).array(), o = a.rightCols(u).array();
    ConstStrided c_prev = t ? step_of(s.c, first, rows, steps, t - 1, u)
                            : rows_of(q.c0, first, rows, u);
    tanh_c.array() = step_of(s.c, first, rows, steps, t, u).array().tanh();
    d_h.array() = step_of(s.dh, first, rows, steps, t, u).array() + dh_next.array();
    d_c.array() = dc_next.array() + d_h.array() * o * (1.0f - tanh_c.array().square());
    Strided dz = step_of(dz_all, first, rows, steps, t, 4 * u);   // (rows, 4 units)
    dz.leftCols(u).array() = d_c.array() * g * i * (1.0f - i);
    dz.middleCols(u, u).array() = d_c.array() * c_prev.array() * f * (1.0f - f);
    dz.middleCols(2 * u, u).array() = d_c.array() * i * (1.0f - g.square());
    dz.rightCols(u).array() = d_h.array() * tanh_c.array() * o * (1.0f - o);
    dc_next.array() = d_c.array() * f;
    dh_next.noalias() = dz * Ut;
  }
  Eigen::Map<Matrix>(dh0 + first * u, rows, u) = dh_next;
  Eigen::Map<Matrix>(dc0 + first * u, rows, u) = dc_next;
}

// One shard's share of the weights' gradients, summed over the shards in order.
struct Shares {
  Matrix kernel, recurrent;
  Eigen::RowVectorXf bias;
};

// The shard's share of dW, dU and db from its dz, and its rows of dx when `dx`.
void weight_gradients(const Sequence& q, const float* h, const float* dz_p, const Matrix& Wt,
                      int64_t first, int64_t rows, Shares* mine, float* dx) {
  const int64_t u = q.units, n = q.inputs, steps = q.steps, r_all = rows * steps;
  // this shard's rows in (stream, step) order: (rows * steps, 4 units) and inputs
  Eigen::Map<const Matrix> dz(dz_p + first * steps * 4 * u, r_all, 4 * u);
  Eigen::Map<const Matrix> x(q.x + first * steps * n, r_all, n);
  // db row after row (a column-wise sum of a row-major matrix strides through it)
  mine->bias = Eigen::RowVectorXf::Zero(4 * u);
  for (int64_t r = 0; r < r_all; ++r) mine->bias += dz.row(r);
  if (q.sparse) {   // dW: each non-zero's row of W gets its share of dz back
    mine->kernel = Matrix::Zero(n, 4 * u);
    for (int64_t r = 0; r < r_all; ++r)
      for (int64_t j = 0; j < n; ++j)
        if (x(r, j) != 0.0f) mine->kernel.row(j) += x(r, j) * dz.row(r);
  } else {
    mine->kernel.noalias() = x.transpose() * dz;
  }
  if (dx != nullptr) Eigen::Map<Matrix>(dx + first * steps * n, r_all, n).noalias() = dz * Wt;
  // dU = the sum over (stream, step) of h_prev^T dz: one product of
  // (units, rows * steps) by (rows * steps, 4 units)
  Matrix h_prev(r_all, u);
  for (int64_t s = 0; s < rows; ++s) {
    h_prev.row(s * steps) = Eigen::Map<const Eigen::RowVectorXf>(q.h0 + (first + s) * u, u);
    if (steps > 1)
      h_prev.middleRows(s * steps + 1, steps - 1) =
          Eigen::Map<const Matrix>(h + (first + s) * steps * u, steps - 1, u);
  }
  mine->recurrent.noalias() = h_prev.transpose() * dz;
}

// Checks the inputs both ops take and returns them as a Sequence.
tensorflow::Status read_sequence(const Tensor& x, const Tensor& h0,
                                 const Tensor& c0, const Tensor& kernel,
                                 const Tensor& recurrent, const Tensor& bias, Sequence* q) {
  TF_RETURN_IF_ERROR(check_weights(x, kernel, recurrent, bias, &q->batch, &q->steps,
                                   &q->inputs, &q->units));
  TF_RETURN_IF_ERROR(check_state(h0, "h0", q->batch, q->units));
  TF_RETURN_IF_ERROR(check_state(c0, "c0", q->batch, q->units));
  q->sparse = is_sparse(x);
  q->x = x.flat<float>().data();
  q->h0 = h0.flat<float>().data();
  q->c0 = c0.flat<float>().data();
  q->kernel = kernel.flat<float>().data();
  q->recurrent = recurrent.flat<float>().data();
  q->bias = bias.flat<float>().data();
  return tensorflow::OkStatus();
}

float* data(Tensor* t) { return t->flat<float>().data(); }

class LstmForward : public OpKernel {
 public:
  explicit LstmForward(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shards", &shards_));
  }

  void Compute(OpKernelContext* ctx) override {
    Sequence q;
    OP_REQUIRES_OK(ctx, read_sequence(ctx->input(0), ctx->input(1), ctx->input(2),
                                      ctx->input(3), ctx->input(4), ctx->input(5), &q));
    Tensor *h, *c, *gates;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({q.batch, q.steps, q.units}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({q.batch, q.steps, q.units}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({q.batch, q.steps, 4 * q.units}),
                                             &gates));
    if (q.batch == 0) return;
    const int shards = static_cast<int>(std::min<int64_t>(shards_, q.batch));
    run_shards(ctx, shards, [&](int k) {
      int64_t first, rows;
      shard_rows(q.batch, shards, k, &first, &rows);
      forward_shard(q, first, rows, data(gates), data(c), data(h));
    });
  }

 private:
  int shards_;
};

class LstmBackward : public OpKernel {
 public:
  explicit LstmBackward(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shards", &shards_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_gradient", &input_gradient_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &kernel = ctx->input(1), &recurrent = ctx->input(2),
                 &bias = ctx->input(3), &gates = ctx->input(4), &c = ctx->input(5),
                 &h = ctx->input(6), &h0 = ctx->input(7), &c0 = ctx->input(8),
                 &dh = ctx->input(9), &dc_last = ctx->input(10);
    Sequence q;
    OP_REQUIRES_OK(ctx, read_sequence(x, h0, c0, kernel, recurrent, bias, &q));
    const int64_t u = q.units, n = q.inputs;
    OP_REQUIRES_OK(ctx, check_sequence(gates, "gates", q.batch, q.steps, 4 * u));
    OP_REQUIRES_OK(ctx, check_sequence(c, "c", q.batch, q.steps, u));
    OP_REQUIRES_OK(ctx, check_sequence(h, "h", q.batch, q.steps, u));
    OP_REQUIRES_OK(ctx, check_sequence(dh, "dh", q.batch, q.steps, u));
    OP_REQUIRES_OK(ctx, check_state(dc_last, "dc_last", q.batch, u));
    Tensor *dx, *dkernel, *drec, *dbias, *dh0, *dc0, dz;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
        0, input_gradient_ ? x.shape() : TensorShape({0, 0, 0}), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel.shape(), &dkernel));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, recurrent.shape(), &drec));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, bias.shape(), &dbias));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, h0.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, c0.shape(), &dc0));
    // every step's gradient for the gates' inputs: (batch, steps, 4 units)
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, gates.shape(), &dz));
    Eigen::Map<Matrix> dW(data(dkernel), n, 4 * u), dU(data(drec), u, 4 * u);
    Eigen::Map<Eigen::RowVectorXf> db(data(dbias), 4 * u);
    dW.setZero();
    dU.setZero();
    db.setZero();
    if (q.batch == 0) return;
    // U^T once (4 units, units): the product by it runs as fast as the forward one
    const Matrix Ut = Eigen::Map<const Matrix>(q.recurrent, u, 4 * u).transpose();
    const Matrix Wt = Eigen::Map<const Matrix>(q.kernel, n, 4 * u).transpose();
    const Saved saved{gates.flat<float>().data(), c.flat<float>().data(),
                      h.flat<float>().data(), dh.flat<float>().data(),
                      dc_last.flat<float>().data()};
    const int shards = static_cast<int>(std::min<int64_t>(shards_, q.batch));
    std::vector<Shares> shares(shards);
    run_shards(ctx, shards, [&](int k) {
      int64_t first, rows;
      shard_rows(q.batch, shards, k, &first, &rows);
      backward_steps(q, saved, Ut, first, rows, data(&dz), data(dh0), data(dc0));
      weight_gradients(q, saved.h, data(&dz), Wt, first, rows, &shares[k],
                       input_gradient_ ? data(dx) : nullptr);
    });
    for (const Shares& share : shares) {
      dW += share.kernel;
      dU += share.recurrent;
      db += share.bias;
    }
  }

 private:
  int shards_;
  bool input_gradient_;
};

}  // namespace

REGISTER_OP("CharstreamLstmForward")
    .Input("x: float")
    .Input("h0: float")
    .Input("c0: float")
    .Input("kernel: float")
    .Input("recurrent: float")
    .Input("bias: float")
    .Attr("shards: int >= 1 = 1")
    .Output("h: float")
    .Output("c: float")
    .Output("gates: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* ctx) {
      auto x = ctx->input(0);
      auto units = ctx->Dim(ctx->input(4), 0);
      auto four_units = ctx->Dim(ctx->input(4), 1);
      auto state = ctx->MakeShape({ctx->Dim(x, 0), ctx->Dim(x, 1), units});
      ctx->set_output(0, state);
      ctx->set_output(1, state);
      ctx->set_output(2, ctx->MakeShape({ctx->Dim(x, 0), ctx->Dim(x, 1), four_units}));
      return tensorflow::OkStatus();
    });

REGISTER_OP("CharstreamLstmBackward")
    .Input("x: float")
    .Input("kernel: float")
    .Input("recurrent: float")
    .Input("bias: float")
    .Input("gates: float")
    .Input("c: float")
    .Input("h: float")
    .Input("h0: float")
    .Input("c0: float")
    .Input("dh: float")
    .Input("dc_last: float")
    .Attr("shards: int >= 1 = 1")
    .Attr("input_gradient: bool = true")
    .Output("dx: float")
    .Output("dkernel: float")
    .Output("drecurrent: float")
    .Output("dbias: float")
    .Output("dh0: float")
    .Output("dc0: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* ctx) {
      bool input_gradient;
      TF_RETURN_IF_ERROR(ctx->GetAttr("input_gradient", &input_gradient));
      ctx->set_output(0, input_gradient ? ctx->input(0) : ctx->MakeShape({0, 0, 0}));
      for (int k = 1; k < 4; ++k) ctx->set_output(k, ctx->input(k));
      ctx->set_output(4, ctx->input(7));
      ctx->set_output(5, ctx->input(8));
      return tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("CharstreamLstmForward").Device(tensorflow::DEVICE_CPU),
                        LstmForward);
REGISTER_KERNEL_BUILDER(Name("CharstreamLstmBackward").Device(tensorflow::DEVICE_CPU),
                        LstmBackward);
