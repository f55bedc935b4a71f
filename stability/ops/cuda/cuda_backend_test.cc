// Every op of the CUDA backend against the CPU backend on the same inputs (fp32), and the
// GPU's determinism. Skipped where no GPU is visible (CI, the developers' machines); run on
// a GPU by tools/gpu_check.sh.
//
// Tolerances: |gpu − cpu| ≤ rel · max|cpu| + abs, per op. GEMM-based ops sum in another
// order (cuBLAS tiles vs oneDNN) and the GPU's expf/tanhf/logf differ from our AVX2
// polynomials by a few ulp, so 1e-5 of the largest value is the bar for GEMM outputs and
// 2e-6 for elementwise and row ops; copies, the embedding (forward and backward: each token's
// rows summed in position order) and AdamW must be exact (AdamW's kernel rounds every
// operation in the CPU's order; the CPU is built without FMA contraction).
#include "stability/ops/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "stability/base/rng.h"

namespace stability::ops::cuda {
namespace {

constexpr Device kGpu{DeviceType::kCuda, 0};

// Tolerances of an attention comparison, each relative to the largest CPU value of its
// output; the defaults are fp32's.
struct AttentionTolerance {
  double out = 1e-5, probs = 2e-6, lse = 2e-6, stats = 1e-5, grads = 1e-5;
  double input_scale = 2.0;  // of q and k: logits of a few units
  bool bf16_inputs = false;  // q, k, v, dO rounded to bf16 for both sides
};

// x rounded to the nearest bf16 (ties to even), as __float2bfloat16_rn; finite inputs.
float RoundToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Backend*> be = InitCudaBackend(0);
    if (!be.ok()) GTEST_SKIP() << "no GPU here: " << be.status().message();
    gpu_ = *be;
    cpu_ = GetBackend(kCpu);
    ASSERT_NE(cpu_, nullptr);
  }

  std::vector<float> Random(int64_t n, double scale = 1.0) {
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(scale * rng_.Normal());
    return v;
  }
  float* Up(const std::vector<float>& h) {
    Tensor t = Tensor::Empty({static_cast<int64_t>(h.size())}, DType::kF32, kGpu);
    t.CopyFromHost(h.data());
    keep_.push_back(t);
    return t.f32();
  }
  int32_t* Up(const std::vector<int32_t>& h) {
    Tensor t = Tensor::Empty({static_cast<int64_t>(h.size())}, DType::kI32, kGpu);
    t.CopyFromHost(h.data());
    keep_.push_back(t);
    return t.i32();
  }
  std::vector<float> Down(const float* d, int64_t n) {
    std::vector<float> h(n);
    Tensor t = Tensor::Empty({n}, DType::kF32, kGpu);
    gpu_->Copy(d, n, t.f32());
    t.CopyToHost(h.data());
    return h;
  }
  // bf16 buffers (a saved pre-activation, SavedValueBytes() = 2): h rounded to nearest even on
  // the way up; n values widened on the way down.
  void* UpBf16(const std::vector<float>& h) {
    std::vector<uint16_t> bits(h.size());
    for (size_t i = 0; i < h.size(); ++i) {
      uint32_t u;
      const float r = RoundToBf16(h[i]);
      std::memcpy(&u, &r, 4);
      bits[i] = static_cast<uint16_t>(u >> 16);
    }
    Tensor t = Tensor::Empty({static_cast<int64_t>(h.size())}, DType::kBF16, kGpu);
    t.CopyFromHost(bits.data());
    keep_.push_back(t);
    return t.data();
  }
  std::vector<float> DownBf16(const void* d, int64_t n) {
    const std::vector<float> pairs = Down(static_cast<const float*>(d), (n + 1) / 2);
    std::vector<uint16_t> bits(pairs.size() * 2);
    std::memcpy(bits.data(), pairs.data(), pairs.size() * sizeof(float));
    std::vector<float> h(n);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(&h[i], &u, 4);
    }
    return h;
  }
  static std::vector<float> RoundedToBf16(std::vector<float> v) {
    for (float& x : v) x = RoundToBf16(x);
    return v;
  }
  // The loss head's logits as the backend keeps them (rows LogitsRowStride(v) values apart,
  // SavedValueBytes() a value): each row's first v values, widened.
  std::vector<float> LogitRows(const void* d, int64_t n, int64_t v) {
    const int64_t ld = gpu_->LogitsRowStride(v);
    const std::vector<float> all =
        gpu_->SavedValueBytes() == 2 ? DownBf16(d, n * ld) : Down(static_cast<const float*>(d), n * ld);
    std::vector<float> rows(n * v);
    for (int64_t i = 0; i < n; ++i) std::copy_n(all.begin() + i * ld, v, rows.begin() + i * v);
    return rows;
  }
  static bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  }
  static void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs,
                          const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double scale = 0;
    for (float w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double e = std::abs(static_cast<double>(got[i]) - want[i]);
      if (!(e <= worst)) worst = e, at = i;
    }
    EXPECT_LE(worst, rel * scale + abs) << what << ": worst at " << at << " gpu " << got[at] << " cpu " << want[at]
                                        << " (max |cpu| " << scale << ")";
  }

  void CompareAttention(int64_t b, int64_t t, int64_t h, int64_t hd, const AttentionOptions& opt, bool fused,
                        const AttentionTolerance& tol = {});
  void MlpBackwardCase(int64_t hidden);

  Rng rng_{20261128};
  Backend* gpu_ = nullptr;
  Backend* cpu_ = nullptr;
  std::vector<Tensor> keep_;
};

TEST_F(CudaBackendTest, LinearForwardAndBackward) {
  const int64_t n = 96, in = 80, out = 72;
  std::vector<float> x = Random(n * in), w = Random(out * in, 0.1), b = Random(out), dy = Random(n * out);
  std::vector<float> y(n * out), dx(n * in), dw(out * in, 0.5f), db(out, 0.25f);
  float *gx = Up(x), *gw = Up(w), *gb = Up(b), *gdy = Up(dy), *gy = Up(y), *gdx = Up(dx), *gdw = Up(dw), *gdb = Up(db);
  cpu_->LinearForward(x.data(), w.data(), b.data(), n, in, out, y.data(), nullptr, nullptr);
  gpu_->LinearForward(gx, gw, gb, n, in, out, gy, nullptr, nullptr);
  ExpectClose(Down(gy, n * out), y, 1e-5, 0, "y");
  cpu_->LinearBackward(x.data(), w.data(), dy.data(), n, in, out, dx.data(), dw.data(), db.data(), nullptr);
  gpu_->LinearBackward(gx, gw, gdy, n, in, out, gdx, gdw, gdb, nullptr);
  ExpectClose(Down(gdx, n * in), dx, 1e-5, 0, "dx");
  ExpectClose(Down(gdw, out * in), dw, 1e-5, 0, "dw (accumulated onto 0.5)");
  ExpectClose(Down(gdb, out), db, 1e-5, 0, "db (accumulated onto 0.25)");
}

// The backward sums each token's rows in position order, as the CPU does: the same bits.
// 640 tokens: more than one tile of the ranking kernel; ids repeat (runs of up to ~50).
TEST_F(CudaBackendTest, Embedding) {
  const int64_t n = 640, t = 16, c = 24, vocab = 50;
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i % 5 == 0 ? 49 - i % 37 : (i * 7) % 13);
  std::vector<float> wte = Random(vocab * c), wpe = Random(t * c), out(n * c), dout = Random(n * c);
  std::vector<float> dwte = Random(vocab * c), dwpe = Random(t * c);  // accumulated onto
  int32_t* gids = Up(ids);
  float *gwte = Up(wte), *gwpe = Up(wpe), *gout = Up(out), *gdout = Up(dout), *gdwte = Up(dwte), *gdwpe = Up(dwpe);
  cpu_->EmbeddingForward(ids.data(), n, t, wte.data(), wpe.data(), c, out.data());
  gpu_->EmbeddingForward(gids, n, t, gwte, gwpe, c, gout);
  EXPECT_EQ(Down(gout, n * c), out);
  cpu_->EmbeddingBackward(ids.data(), n, t, dout.data(), c, dwte.data(), dwpe.data());
  gpu_->EmbeddingBackward(gids, n, t, gdout, c, gdwte, gdwpe);
  EXPECT_EQ(Down(gdwte, vocab * c), dwte);
  EXPECT_EQ(Down(gdwpe, t * c), dwpe);
}

TEST_F(CudaBackendTest, Norms) {
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    // A per-head width, a wider row over three uneven row chunks of the backward (8 warps a
    // block, 4 or 5 rows each), GPT-2's width and the 830M shape's (4 warps; 24 and 32 columns
    // a lane in registers), one of 16 a lane, one warp a block whose column sums (8 bytes a
    // column) pass the default 48 KB of shared memory (its rows streamed: past 1,024), and 34
    // chunks: more than the column totals' warps, so that each warp adds several. Rows up to
    // 128 wide go four to a warp (8 lanes a row): row counts that leave a warp's last groups
    // without a row, forward and in the backward's chunks (37, 13, 7), a width not a multiple
    // of 8 (100), the widest such (128) and the narrowest past it (129, 32 lanes).
    for (auto [rows, d] : {std::pair<int64_t, int64_t>{48, 64},
                           {100, 200},
                           {40, 768},
                           {64, 1024},
                           {20, 500},
                           {70, 7000},
                           {1100, 40},
                           {37, 64},
                           {13, 100},
                           {7, 128},
                           {30, 129}}) {
      SCOPED_TRACE(testing::Message() << "rows " << rows << ", d " << d);
      std::vector<float> x = Random(rows * d, 2.0), g = Random(d), b = Random(d), dy = Random(rows * d);
      std::vector<float> y(rows * d), mean(rows), rstd(rows), dx(rows * d), dg(d, 0.0f), db(d, 0.0f);
      const float* bp = kind == NormKind::kLayerNorm ? b.data() : nullptr;
      float *gx = Up(x), *gg = Up(g), *gb = Up(b), *gdy = Up(dy), *gy = Up(y), *gmean = Up(mean), *grstd = Up(rstd),
            *gdx = Up(dx), *gdg = Up(dg), *gdb = Up(db);
      cpu_->NormForward(kind, x.data(), RowLayout::Contiguous(d), g.data(), bp, rows, d, 1e-5f, y.data(), mean.data(),
                        rstd.data(), nullptr);
      gpu_->NormForward(kind, gx, RowLayout::Contiguous(d), gg, bp ? gb : nullptr, rows, d, 1e-5f, gy, gmean, grstd,
                        nullptr);
      ExpectClose(Down(gy, rows * d), y, 2e-6, 0, "norm y");
      ExpectClose(Down(grstd, rows), rstd, 2e-6, 0, "rstd");
      cpu_->NormBackward(kind, x.data(), RowLayout::Contiguous(d), g.data(), mean.data(), rstd.data(), dy.data(), rows,
                         d, dx.data(), dg.data(), bp ? db.data() : nullptr, nullptr);
      gpu_->NormBackward(kind, gx, RowLayout::Contiguous(d), gg, gmean, grstd, gdy, rows, d, gdx, gdg,
                         bp ? gdb : nullptr, nullptr);
      ExpectClose(Down(gdx, rows * d), dx, 1e-5, 0, "norm dx");
      ExpectClose(Down(gdg, d), dg, 1e-5, 0, "dg");
      if (bp) ExpectClose(Down(gdb, d), db, 1e-5, 0, "db");
    }
  }
}

// Rows read in place from a column block of a wider buffer (the q/k/v norms on the QKV
// product: per head, a token's H rows side by side; full width, one), dx written into the
// block: the GPU's contiguous results bit for bit (the same kernels, only the addresses
// differ), and nothing written outside the block.
TEST_F(CudaBackendTest, NormRowsInAWiderBufferAreTheContiguousRows) {
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    for (int64_t group : {1, 4}) {
      const int64_t d = 64, tokens = 70, rows = tokens * group, col0 = group * d, stride = 3 * group * d + 4;
      const RowLayout layout{group, stride};
      std::vector<float> x = Random(rows * d, 2.0), g = Random(d), b = Random(d), dy = Random(rows * d);
      std::vector<float> wide(tokens * stride, NAN);
      for (int64_t r = 0; r < rows; ++r) std::copy_n(&x[r * d], d, &wide[col0 + layout.Offset(r, d)]);
      std::vector<float> zeros(rows * d, 0.0f), zd(d, 0.0f), zr(rows, 0.0f);
      float *gx = Up(x), *gg = Up(g), *gb = Up(b), *gdy = Up(dy), *gwide = Up(wide);
      float *gdwide = Up(std::vector<float>(tokens * stride, -7.0f)), *gy = Up(zeros), *gdx = Up(zeros);
      float *gmean = Up(zr), *grstd = Up(zr), *gdg = Up(zd), *gdb = Up(zd);
      float *gy2 = Up(zeros), *gmean2 = Up(zr), *grstd2 = Up(zr), *gdg2 = Up(zd), *gdb2 = Up(zd);
      gpu_->NormForward(kind, gx, RowLayout::Contiguous(d), gg, gb, rows, d, 1e-5f, gy, gmean, grstd, nullptr);
      gpu_->NormBackward(kind, gx, RowLayout::Contiguous(d), gg, gmean, grstd, gdy, rows, d, gdx, gdg, gdb, nullptr);
      gpu_->NormForward(kind, gwide + col0, layout, gg, gb, rows, d, 1e-5f, gy2, gmean2, grstd2, nullptr);
      gpu_->NormBackward(kind, gwide + col0, layout, gg, gmean2, grstd2, gdy, rows, d, gdwide + col0, gdg2, gdb2,
                         nullptr);
      EXPECT_EQ(Down(gy2, rows * d), Down(gy, rows * d));
      EXPECT_EQ(Down(grstd2, rows), Down(grstd, rows));
      EXPECT_EQ(Down(gdg2, d), Down(gdg, d));
      EXPECT_EQ(Down(gdb2, d), Down(gdb, d));
      const std::vector<float> dx = Down(gdx, rows * d);
      std::vector<float> dwide = Down(gdwide, tokens * stride);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = col0 + layout.Offset(r, d);
        EXPECT_TRUE(std::equal(&dx[r * d], &dx[(r + 1) * d], &dwide[at])) << "dx row " << r << ", group " << group;
        std::fill_n(&dwide[at], d, -7.0f);
      }
      EXPECT_EQ(dwide, std::vector<float>(tokens * stride, -7.0f)) << "written outside the block, group " << group;
    }
  }
}

// The fused residual add + norm: against the CPU's (the Norms bars), and bit for bit against
// the GPU's own Add + NormForward and NormBackward + AddInPlace (the same kernels' math).
TEST_F(CudaBackendTest, AddNormFusesTheResidualAdd) {
  const int64_t rows = 48, d = 200;
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    std::vector<float> x = Random(rows * d, 2.0), a = Random(rows * d), g = Random(d), b = Random(d);
    std::vector<float> dy = Random(rows * d), dres = Random(rows * d);
    std::vector<float> sum(rows * d), y(rows * d), mean(rows), rstd(rows), dg(d, 0.5f), db(d, 0.25f), dsum = dres;
    const float* bp = kind == NormKind::kLayerNorm ? b.data() : nullptr;
    cpu_->AddNormForward(kind, x.data(), a.data(), nullptr, g.data(), bp, rows, d, 1e-5f, sum.data(), y.data(),
                         mean.data(), rstd.data(), nullptr);
    cpu_->AddNormBackward(kind, sum.data(), g.data(), mean.data(), rstd.data(), dy.data(), rows, d, dsum.data(),
                          dg.data(), bp ? db.data() : nullptr, nullptr, nullptr);
    float *gx = Up(x), *ga = Up(a), *gg = Up(g), *gb = bp ? Up(b) : nullptr, *gdy = Up(dy);
    float *gsum = Up(sum), *gy = Up(y), *gmean = Up(mean), *grstd = Up(rstd), *gdsum = Up(dres);
    float *gdg = Up(std::vector<float>(d, 0.5f)), *gdb = Up(std::vector<float>(d, 0.25f));
    gpu_->AddNormForward(kind, gx, ga, nullptr, gg, gb, rows, d, 1e-5f, gsum, gy, gmean, grstd, nullptr);
    gpu_->AddNormBackward(kind, gsum, gg, gmean, grstd, gdy, rows, d, gdsum, gdg, bp ? gdb : nullptr, nullptr, nullptr);
    EXPECT_EQ(Down(gsum, rows * d), sum);  // one float add
    ExpectClose(Down(gy, rows * d), y, 2e-6, 0, "add+norm y");
    ExpectClose(Down(grstd, rows), rstd, 2e-6, 0, "add+norm rstd");
    ExpectClose(Down(gdsum, rows * d), dsum, 1e-5, 0, "dsum (accumulated onto dres)");
    ExpectClose(Down(gdg, d), dg, 1e-5, 0, "dg");
    if (bp) ExpectClose(Down(gdb, d), db, 1e-5, 0, "db");

    float *usum = Up(sum), *uy = Up(y), *umean = Up(mean), *urstd = Up(rstd), *udx = Up(sum), *udres = Up(dres);
    float *udg = Up(std::vector<float>(d, 0.5f)), *udb = Up(std::vector<float>(d, 0.25f));
    gpu_->Add(gx, ga, rows * d, usum);
    gpu_->NormForward(kind, usum, RowLayout::Contiguous(d), gg, gb, rows, d, 1e-5f, uy, umean, urstd, nullptr);
    gpu_->NormBackward(kind, usum, RowLayout::Contiguous(d), gg, umean, urstd, gdy, rows, d, udx, udg,
                       bp ? udb : nullptr, nullptr);
    gpu_->AddInPlace(udres, udx, rows * d);
    EXPECT_EQ(Down(gy, rows * d), Down(uy, rows * d));
    EXPECT_EQ(Down(grstd, rows), Down(urstd, rows));
    EXPECT_EQ(Down(gdsum, rows * d), Down(udres, rows * d));
    EXPECT_EQ(Down(gdg, d), Down(udg, d));

    // With a layer scale on the branch: bit for bit ChannelScaleForward, Add, NormForward.
    float* gs = Up(g);  // any channel vector
    gpu_->ChannelScaleForward(ga, gs, rows, d, uy);
    gpu_->Add(gx, uy, rows * d, usum);
    gpu_->NormForward(kind, usum, RowLayout::Contiguous(d), gg, gb, rows, d, 1e-5f, uy, umean, urstd, nullptr);
    gpu_->AddNormForward(kind, gx, ga, gs, gg, gb, rows, d, 1e-5f, gsum, gy, gmean, grstd, nullptr);
    EXPECT_EQ(Down(gsum, rows * d), Down(usum, rows * d));
    EXPECT_EQ(Down(gy, rows * d), Down(uy, rows * d));
  }
}

// A product handing its input gradient to the norm backward after it in bf16 (Bf16Operands::dx,
// AddNormBackward's `from`; the model's QKV → N1 and FC1 → N2): LinearBackward and MlpBackward
// write dx rounded into kept->dx and leave their fp32 dx alone — the rounding of the fp32 product
// (within 2⁻⁸ of each value, bf16's unit roundoff, and cuBLAS's choice of accumulation order
// for a bf16 output: 2⁻¹⁶ of the largest) — and AddNormBackward reading it gives the bits of the fp32 op given those
// values. The CPU, which keeps no bf16 operands, refuses a bf16 dy.
TEST_F(CudaBackendTest, ProductsHandTheirInputGradientToTheNormInBf16) {
  const int64_t n = 64, in = 48, hidden = 96, out = 40;
  const NormKind kind = NormKind::kLayerNorm;
  float *gx = Up(Random(n * in, 2.0)), *ga = Up(Random(n * in)), *gg = Up(Random(in)), *gb = Up(Random(in));
  float *gsum = Up(std::vector<float>(n * in)), *gmean = Up(std::vector<float>(n)), *grstd = Up(std::vector<float>(n));
  gpu_->AddNormForward(kind, gx, ga, nullptr, gg, gb, n, in, 1e-5f, gsum, nullptr, gmean, grstd, nullptr);
  float *w1 = Up(Random(hidden * in, 0.2)), *h = Up(Random(n * hidden)), *w2 = Up(Random(out * hidden, 0.1)),
        *dz = Up(Random(n * out));
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const void* pre = UpBf16(Random(n * hidden, 2.0));
  Tensor x16 = Tensor::Empty({n * in}, DType::kBF16, kGpu), w16 = Tensor::Empty({hidden * in}, DType::kBF16, kGpu),
         dx16 = Tensor::Empty({n * in}, DType::kBF16, kGpu);
  Bf16Operands fc1{x16.data(), w16.data()};
  gpu_->LinearForward(gsum, w1, nullptr, n, in, hidden, Up(std::vector<float>(n * hidden)), &fc1, nullptr);
  for (int op = 0; op < 2; ++op) {  // LinearBackward (QKV's), MlpBackward's FC1
    SCOPED_TRACE(op == 0 ? "LinearBackward" : "MlpBackward");
    std::vector<std::vector<float>> dx;
    for (bool handed : {false, true}) {
      fc1.dx = handed ? dx16.data() : nullptr;
      float* gdx = Up(std::vector<float>(n * in, 7.0f));
      float *dw1 = Up(std::vector<float>(hidden * in)), *dw2 = Up(std::vector<float>(out * hidden));
      if (op == 0) {
        gpu_->LinearBackward(gsum, w1, h, n, in, hidden, gdx, dw1, nullptr, &fc1);
      } else {
        gpu_->MlpBackward(Activation::kGelu, {gsum, w1, &fc1, dw1, nullptr}, {h, w2, nullptr, dw2, nullptr}, pre, dz, n,
                          in, hidden, out, Up(std::vector<float>(n * hidden)), Up(std::vector<float>(n * hidden)), gdx);
      }
      dx.push_back(handed ? DownBf16(dx16.data(), n * in) : Down(gdx, n * in));
      if (handed) {
        EXPECT_EQ(Down(gdx, n * in), std::vector<float>(n * in, 7.0f)) << "the fp32 dx left alone";
      }
    }
    double scale = 0;
    for (float v : dx[0]) scale = std::max(scale, std::abs(static_cast<double>(v)));
    for (int64_t i = 0; i < n * in; ++i) {
      ASSERT_NEAR(dx[1][i], dx[0][i], std::ldexp(std::abs(dx[0][i]), -8) + std::ldexp(scale, -16)) << i;
    }
    // The norm reading it: the bits of the fp32 op given the same values.
    const std::vector<float> dres = Random(n * in);
    float *from_bf16 = Up(dres), *from_fp32 = Up(dres), *dg = Up(std::vector<float>(in)),
          *dg32 = Up(std::vector<float>(in));
    gpu_->AddNormBackward(kind, gsum, gg, gmean, grstd, nullptr, n, in, from_bf16, dg, nullptr, &fc1, nullptr);
    gpu_->AddNormBackward(kind, gsum, gg, gmean, grstd, Up(dx[1]), n, in, from_fp32, dg32, nullptr, nullptr, nullptr);
    EXPECT_TRUE(SameBits(Down(from_bf16, n * in), Down(from_fp32, n * in)));
    EXPECT_TRUE(SameBits(Down(dg, in), Down(dg32, in)));
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  std::vector<float> host(n * in);
  const Bf16Operands host_from{nullptr, nullptr, false, nullptr, false, false, host.data()};
  EXPECT_THROW(cpu_->AddNormBackward(kind, host.data(), host.data(), host.data(), host.data(), nullptr, n, in,
                                     host.data(), host.data(), nullptr, &host_from, nullptr),
               std::logic_error);
}

// A norm's backward writing the next product's bf16 gradient operand (NormBackward's and
// AddNormBackward's `next`, as the model hands the residual stream's gradient to Proj and
// FC2): in bf16 next->dy is the stored dx rounded, bit for bit, and flagged; the product's
// LinearBackward reading it gives the dx and dw of rounding dy itself, bit for bit, and a
// bias gradient summed from the rounded values instead of the fp32 ones, within that rounding:
// |Δdb_j| ≤ 2⁻⁹·Σ_r |dy_rj| (+ fp32 summation's (n + 1)·2⁻²⁴ of it). A norm read in place
// (per head) and fp32 products leave next alone.
TEST_F(CudaBackendTest, NormBackwardWritesTheNextProductsGradientOperand) {
  const int64_t rows = 64, d = 48, in = 32;
  const NormKind kind = NormKind::kLayerNorm;
  float *gx = Up(Random(rows * d, 2.0)), *ga = Up(Random(rows * d)), *gg = Up(Random(d)), *gb = Up(Random(d));
  float *gsum = Up(std::vector<float>(rows * d)), *gmean = Up(std::vector<float>(rows)),
        *grstd = Up(std::vector<float>(rows)), *gdy = Up(Random(rows * d));
  gpu_->AddNormForward(kind, gx, ga, nullptr, gg, gb, rows, d, 1e-5f, gsum, nullptr, gmean, grstd, nullptr);
  const std::vector<float> dres = Random(rows * d);
  float *lx = Up(Random(rows * in)), *lw = Up(Random(d * in, 0.2));
  Tensor x16 = Tensor::Empty({rows * in}, DType::kBF16, kGpu), w16 = Tensor::Empty({d * in}, DType::kBF16, kGpu);
  Tensor dy16 = Tensor::Empty({rows * d}, DType::kBF16, kGpu);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  Bf16Operands kept{x16.data(), w16.data()};
  gpu_->LinearForward(lx, lw, nullptr, rows, in, d, Up(std::vector<float>(rows * d)), &kept, nullptr);
  std::vector<std::vector<float>> dsum, dx, dw, db;
  for (bool handed : {false, true}) {
    float *gdsum = Up(dres), *gdg = Up(std::vector<float>(d)), *gdb = Up(std::vector<float>(d));
    kept.dy = handed ? dy16.data() : nullptr;
    gpu_->AddNormBackward(kind, gsum, gg, gmean, grstd, gdy, rows, d, gdsum, gdg, gdb, nullptr,
                          handed ? &kept : nullptr);
    EXPECT_EQ(kept.dy_rounded, handed);
    float *ldx = Up(std::vector<float>(rows * in)), *ldw = Up(std::vector<float>(d * in)),
          *ldb = Up(std::vector<float>(d, 0.5f));
    gpu_->LinearBackward(lx, lw, gdsum, rows, in, d, ldx, ldw, ldb, &kept);
    kept.dy_rounded = false;
    dsum.push_back(Down(gdsum, rows * d));
    dx.push_back(Down(ldx, rows * in));
    dw.push_back(Down(ldw, d * in));
    db.push_back(Down(ldb, d));
  }
  EXPECT_TRUE(SameBits(dsum[1], dsum[0])) << "dsum";
  EXPECT_EQ(DownBf16(dy16.data(), rows * d), RoundedToBf16(dsum[0])) << "next->dy: dsum rounded";
  EXPECT_TRUE(SameBits(dx[1], dx[0])) << "the product's dx";
  EXPECT_TRUE(SameBits(dw[1], dw[0])) << "the product's dw";
  for (int64_t j = 0; j < d; ++j) {
    double magnitude = 0.5;
    for (int64_t r = 0; r < rows; ++r) magnitude += std::abs(dsum[0][r * d + j]);
    EXPECT_NEAR(db[1][j], db[0][j], (std::ldexp(1.0, -9) + (rows + 1) * std::ldexp(1.0, -24)) * magnitude) << j;
  }
  // Per head (rows read in place): no contiguous dx to hand on.
  float *gdx = Up(std::vector<float>(rows * d)), *gdg = Up(std::vector<float>(d / 2));
  Bf16Operands per_head{x16.data(), w16.data(), false, dy16.data()};
  float* ones = Up(std::vector<float>(rows * 2, 1.0f));  // a mean and rstd a head row
  gpu_->NormBackward(kind, gsum, RowLayout{2, d}, gg, ones, ones, gdy, rows * 2, d / 2, gdx, gdg, nullptr, &per_head);
  EXPECT_FALSE(per_head.dy_rounded);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  Bf16Operands fp32{x16.data(), w16.data(), false, dy16.data()};
  gpu_->AddNormBackward(kind, gsum, gg, gmean, grstd, gdy, rows, d, Up(dres), Up(std::vector<float>(d)), nullptr,
                        nullptr, &fp32);
  EXPECT_FALSE(fp32.dy_rounded);
}

// Plain, soft cap, temperature and clipped softmax, at head dim hd.
std::vector<AttentionOptions> EveryAttentionOption(int64_t hd) {
  AttentionOptions plain;
  plain.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  AttentionOptions cap = plain, temp = plain, clip = plain;
  cap.soft_cap = 2.0f;
  temp.temperature = 1.7f;
  clip.clip = true;
  return {plain, cap, temp, clip};
}

// Forward (out, lse, telemetry; probs unless fused) and backward against the CPU; a second
// backward must give the same bits.
void CudaBackendTest::CompareAttention(int64_t b, int64_t t, int64_t h, int64_t hd, const AttentionOptions& opt,
                                       bool fused, const AttentionTolerance& tol) {
  SCOPED_TRACE("hd " + std::to_string(hd) + " cap " + std::to_string(opt.soft_cap) + " temp " +
               std::to_string(opt.temperature) + " clip " + std::to_string(opt.clip) + (fused ? " fused" : ""));
  const int64_t n = b * t * h * hd;
  std::vector<float> q = Random(n, tol.input_scale), k = Random(n, tol.input_scale);
  std::vector<float> v = Random(n), dout = Random(n);
  if (tol.bf16_inputs) {
    for (std::vector<float>* x : {&q, &k, &v, &dout}) {
      for (float& e : *x) e = RoundToBf16(e);
    }
  }
  std::vector<float> out(n), probs(b * h * t * t), lse(b * h * t), dq(n), dk(n), dv(n);
  float *gq = Up(q), *gk = Up(k), *gv = Up(v), *gdout = Up(dout), *gout = Up(out), *gprobs = fused ? nullptr : Up(probs),
        *glse = Up(lse), *gdq = Up(dq), *gdk = Up(dk), *gdv = Up(dv);
  AttentionStats cs, gs;
  const AttentionStrides ld = AttentionStrides::Contiguous(h * hd);
  cpu_->AttentionForward(q.data(), k.data(), v.data(), b, t, h, hd, opt, ld, out.data(), probs.data(), lse.data(), &cs,
                         nullptr, nullptr);
  gpu_->AttentionForward(gq, gk, gv, b, t, h, hd, opt, ld, gout, gprobs, glse, &gs, nullptr, nullptr);
  ExpectClose(Down(gout, n), out, tol.out, 0, "attention out");
  if (!fused) ExpectClose(Down(gprobs, probs.size()), probs, tol.probs, 0, "probs");
  ExpectClose(Down(glse, lse.size()), lse, tol.lse, 0, "lse");
  EXPECT_NEAR(gs.max_logit, cs.max_logit, tol.stats * std::abs(cs.max_logit));
  EXPECT_NEAR(gs.entropy_sum, cs.entropy_sum, tol.stats * cs.entropy_sum);
  const bool tensor_core = fused && tol.bf16_inputs;
  {  // next: the tensor-core kernel (bf16) also writes out rounded into the next product's
     // operand, bit for bit, and out unchanged; the other kernels leave next alone.
    Bf16Operands next{UpBf16(std::vector<float>(n)), nullptr, false};
    float *gout3 = Up(out), *glse3 = Up(lse), *gprobs3 = fused ? nullptr : Up(probs);
    gpu_->AttentionForward(gq, gk, gv, b, t, h, hd, opt, ld, gout3, gprobs3, glse3, nullptr, nullptr, &next);
    EXPECT_EQ(next.x_rounded, tensor_core) << "next marked rounded";
    EXPECT_EQ(Down(gout3, n), Down(gout, n)) << "out beside next";
    if (tensor_core) {
      EXPECT_TRUE(SameBits(DownBf16(next.x, n), RoundedToBf16(Down(gout, n)))) << "next: out rounded";
    }
  }
  cpu_->AttentionBackward(q.data(), k.data(), v.data(), out.data(), probs.data(), lse.data(), dout.data(), b, t, h, hd,
                          opt, ld, nullptr, dq.data(), dk.data(), dv.data());
  gpu_->AttentionBackward(gq, gk, gv, gout, gprobs, glse, gdout, b, t, h, hd, opt, ld, nullptr, gdq, gdk, gdv);
  const std::vector<float> first_dk = Down(gdk, n);
  ExpectClose(Down(gdq, n), dq, tol.grads, 0, "dq");
  ExpectClose(first_dk, dk, tol.grads, 0, "dk");
  ExpectClose(Down(gdv, n), dv, tol.grads, 0, "dv");
  {  // kept: the tensor-core forward rounds q, k, v into the layer's kept operands ([B·T, 3·C],
     // q, k, v the column blocks; the other kernels leave the flag clear), and a backward given
     // them reads them there, not q, k, v: the same bits with q, k and v zero. Where QKV's
     // product wrote them there alone (x_rounded on entry), the forward reads them there too:
     // the same bits again with q, k, v zero; a kernel that reads fp32 refuses them.
    const int64_t c = h * hd;
    std::vector<float> qkv16(3 * n);
    for (int64_t r = 0; r < b * t; ++r) {
      for (int64_t j = 0; j < c; ++j) {
        qkv16[r * 3 * c + j] = RoundToBf16(q[r * c + j]);
        qkv16[r * 3 * c + c + j] = RoundToBf16(k[r * c + j]);
        qkv16[r * 3 * c + 2 * c + j] = RoundToBf16(v[r * c + j]);
      }
    }
    Bf16Operands kept{UpBf16(std::vector<float>(3 * n, NAN)), nullptr, false};
    float *gout4 = Up(out), *glse4 = Up(lse), *gprobs4 = fused ? nullptr : Up(probs);
    gpu_->AttentionForward(gq, gk, gv, b, t, h, hd, opt, ld, gout4, gprobs4, glse4, nullptr, &kept, nullptr);
    EXPECT_EQ(kept.x_rounded, tensor_core) << "kept marked rounded";
    EXPECT_EQ(Down(gout4, n), Down(gout, n)) << "out beside kept";
    EXPECT_EQ(gpu_->AttentionReadsRoundedInputs(hd, opt), tensor_core);
    float* gzero = Up(std::vector<float>(n, 0.0f));
    if (tensor_core) {
      EXPECT_TRUE(SameBits(DownBf16(kept.x, 3 * n), qkv16)) << "kept: q, k, v rounded, QKV's layout";
      float *gdq4 = Up(dq), *gdk4 = Up(dk), *gdv4 = Up(dv);
      gpu_->AttentionBackward(gzero, gzero, gzero, gout, gprobs, glse, gdout, b, t, h, hd, opt, ld, &kept, gdq4, gdk4,
                              gdv4);
      EXPECT_EQ(Down(gdq4, n), Down(gdq, n)) << "dq from the kept q, k, v";
      EXPECT_EQ(Down(gdk4, n), first_dk) << "dk from the kept q, k, v";
      EXPECT_EQ(Down(gdv4, n), Down(gdv, n)) << "dv from the kept q, k, v";
      // dO in bf16 alone (kept->dy, as Proj's backward writes it): the same bits, dout zero.
      kept.dy = UpBf16(RoundedToBf16(dout));
      kept.dy_rounded = true;
      gpu_->AttentionBackward(gzero, gzero, gzero, gout, gprobs, glse, gzero, b, t, h, hd, opt, ld, &kept, gdq4, gdk4,
                              gdv4);
      EXPECT_EQ(Down(gdq4, n), Down(gdq, n)) << "dq from the kept dO";
      EXPECT_EQ(Down(gdk4, n), first_dk) << "dk from the kept dO";
      EXPECT_EQ(Down(gdv4, n), Down(gdv, n)) << "dv from the kept dO";
    } else {
      Bf16Operands dout_only{nullptr, nullptr, false, UpBf16(RoundedToBf16(dout)), true};
      EXPECT_THROW(gpu_->AttentionBackward(gq, gk, gv, gout, gprobs, glse, gzero, b, t, h, hd, opt, ld, &dout_only, gdq,
                                           gdk, gdv),
                   std::logic_error);
    }
    Bf16Operands written{UpBf16(qkv16), nullptr, true};
    float *gout5 = Up(out), *glse5 = Up(lse), *gprobs5 = fused ? nullptr : Up(probs);
    if (tensor_core) {
      gpu_->AttentionForward(gzero, gzero, gzero, b, t, h, hd, opt, ld, gout5, gprobs5, glse5, nullptr, &written,
                             nullptr);
      EXPECT_TRUE(written.x_rounded);
      EXPECT_EQ(Down(gout5, n), Down(gout, n)) << "out from q, k, v written into kept by their producer";
      EXPECT_EQ(Down(glse5, lse.size()), Down(glse, lse.size())) << "lse from the producer's q, k, v";
    } else {
      EXPECT_THROW(gpu_->AttentionForward(gzero, gzero, gzero, b, t, h, hd, opt, ld, gout5, gprobs5, glse5, nullptr,
                                          &written, nullptr),
                   std::logic_error);
    }
  }
  gpu_->AttentionBackward(gq, gk, gv, gout, gprobs, glse, gdout, b, t, h, hd, opt, ld, nullptr, gdq, gdk, gdv);
  EXPECT_EQ(Down(gdk, n), first_dk);

  // q, k, v read in place as the column blocks of one [B·T, 3·C + 4] buffer (NaN between the
  // rows' blocks, so a stray read shows), dq, dk, dv written into one: the fused kernels must
  // give the contiguous call's bits (the same arithmetic); the GEMM path within 1e-6 (cuBLAS
  // may choose another algorithm for another leading dimension). Nothing written outside.
  const int64_t rows = b * t, c = h * hd, wide = 3 * c + 4;
  std::vector<float> qkv(rows * wide, NAN), dqkv(rows * wide, -7.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < c; ++j) {
      qkv[r * wide + j] = q[r * c + j];
      qkv[r * wide + c + j] = k[r * c + j];
      qkv[r * wide + 2 * c + j] = v[r * c + j];
    }
  }
  float *gqkv = Up(qkv), *gdqkv = Up(dqkv), *gout2 = Up(out), *glse2 = Up(lse);
  float* gprobs2 = fused ? nullptr : Up(probs);
  const AttentionStrides blocks{wide, wide, wide, wide, wide, wide};
  gpu_->AttentionForward(gqkv, gqkv + c, gqkv + 2 * c, b, t, h, hd, opt, blocks, gout2, gprobs2, glse2, nullptr,
                         nullptr, nullptr);
  gpu_->AttentionBackward(gqkv, gqkv + c, gqkv + 2 * c, gout2, gprobs2, glse2, gdout, b, t, h, hd, opt, blocks, nullptr,
                          gdqkv, gdqkv + c, gdqkv + 2 * c);
  const double same = fused ? 0.0 : 1e-6;
  ExpectClose(Down(gout2, n), Down(gout, n), same, 0, "out, strided inputs");
  ExpectClose(Down(glse2, lse.size()), Down(glse, lse.size()), same, 0, "lse, strided inputs");
  const std::vector<float> got = Down(gdqkv, rows * wide);
  std::vector<float> block(n), padding;
  for (auto [col0, want, what] : {std::tuple{int64_t{0}, gdq, "dq"}, {c, gdk, "dk"}, {2 * c, gdv, "dv"}}) {
    for (int64_t r = 0; r < rows; ++r) std::copy_n(&got[r * wide + col0], c, &block[r * c]);
    ExpectClose(block, Down(want, n), same, 0, what);
  }
  for (int64_t r = 0; r < rows; ++r) padding.insert(padding.end(), &got[r * wide + 3 * c], &got[(r + 1) * wide]);
  EXPECT_EQ(padding, std::vector<float>(rows * 4, -7.0f)) << "written outside the gradient blocks";
}

TEST_F(CudaBackendTest, AttentionWithEveryOption) {
  for (const AttentionOptions& opt : EveryAttentionOption(16)) CompareAttention(2, 40, 3, 16, opt, false);
}

// The fused kernel (no T×T storage) at head dims of the presets and a T that is not a
// multiple of the tiles.
TEST_F(CudaBackendTest, FusedAttentionWithEveryOption) {
  gpu_->SetAttentionKernel(AttentionKernel::kFused);
  for (int64_t hd : {16, 64, 96}) {
    for (const AttentionOptions& opt : EveryAttentionOption(hd)) CompareAttention(2, 100, 2, hd, opt, true);
  }
  gpu_->SetAttentionKernel(AttentionKernel::kGemm);
}

// The tensor-core kernel (fused, bf16) at every head dim it has, T not a multiple of its
// 64-row tiles, every option, against the fp32 CPU on the same bf16-rounded q, k, v and dO
// (the kernel rounds them once, RowsToBf16Kernel, so that rounding is the same on both sides). What
// remains is the kernel's own: P (or P') and dZ rounded to bf16 for their products, and
// (no clip) D = dO·O from the forward's output. Emulated in PyTorch
// (tensor_core_attention_numerics.py), the worst over every head dim and option: out
// 2.5e-3 and gradients 7.5e-3 of their largest value; lse, max logit and entropy ~1e-7
// (fp32 sums in another order). The bars: 1e-2, 1.5e-2 and 1e-5. Rounding only the GPU's
// inputs would not do: bf16 moves some p across a clip threshold, where the clipped
// softmax's gradient jumps (dq off by up to 0.14 of its largest value in the emulation).
TEST_F(CudaBackendTest, TensorCoreAttentionWithEveryOption) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  gpu_->SetAttentionKernel(AttentionKernel::kFused);
  AttentionTolerance bf16;
  bf16.out = 1e-2, bf16.lse = 1e-5, bf16.stats = 1e-5, bf16.grads = 1.5e-2, bf16.input_scale = 1.0;
  bf16.bf16_inputs = true;
  for (int64_t hd : {16, 32, 64, 96, 128}) {
    for (const AttentionOptions& opt : EveryAttentionOption(hd)) CompareAttention(2, 100, 2, hd, opt, true, bf16);
  }
  CompareAttention(1, 192, 3, 64, EveryAttentionOption(64)[1], true, bf16);  // whole tiles only
  // 6 tiles of 64 (the last partial): the double buffers each reused several times, and under
  // the clip the second sweep's first tile issued while the first sweep's last is in use.
  for (const AttentionOptions& opt : EveryAttentionOption(64)) CompareAttention(1, 330, 1, 64, opt, true, bf16);
  // Every option at once (the kernels' Softmax2<cap, clip> both compiled in).
  AttentionOptions all = EveryAttentionOption(64)[0];
  all.soft_cap = 2.0f, all.temperature = 1.7f, all.clip = true;
  for (int64_t t : {100, 330}) CompareAttention(1, t, 2, 64, all, true, bf16);
  // A negative scale: the tensor-core kernels take a row's largest logit from its largest S,
  // which needs scale > 0, so the fp32 fused kernel answers instead: fp32's tolerances, and
  // next not written.
  AttentionOptions negative = EveryAttentionOption(64)[1];
  negative.scale = -negative.scale;
  CompareAttention(2, 100, 2, 64, negative, true);
  gpu_->SetAttentionKernel(AttentionKernel::kGemm);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

TEST_F(CudaBackendTest, RopeAndItsInverse) {
  const int64_t b = 2, t = 12, h = 2, hd = 8, n = b * t * h * hd;
  std::vector<float> x = Random(n), y = x;
  float* gx = Up(x);
  const int64_t c = h * hd;
  cpu_->Rope(y.data(), c, y.data(), c, b, t, h, hd, 10000.0f, false);
  gpu_->Rope(gx, c, gx, c, b, t, h, hd, 10000.0f, false);
  const std::vector<float> rotated = Down(gx, n);
  ExpectClose(rotated, y, 2e-6, 0, "rope");
  gpu_->Rope(gx, c, gx, c, b, t, h, hd, 10000.0f, true);
  ExpectClose(Down(gx, n), x, 2e-6, 0, "rope then inverse");
  // Out of place from a block of wider rows (a QKV block, 3·C) and back into one: the same
  // bits as in place, nothing written outside the block.
  std::vector<float> wide(b * t * 3 * c, -7.0f);
  for (int64_t r = 0; r < b * t; ++r) std::copy_n(&x[r * c], c, &wide[r * 3 * c + c]);
  float *gwide = Up(wide), *gy = Up(std::vector<float>(n, 0.0f)), *gback = Up(std::vector<float>(b * t * 3 * c, -7.0f));
  gpu_->Rope(gwide + c, 3 * c, gy, c, b, t, h, hd, 10000.0f, false);
  EXPECT_EQ(Down(gy, n), rotated);
  gpu_->Rope(gy, c, gback + c, 3 * c, b, t, h, hd, 10000.0f, true);
  const std::vector<float> inverse = Down(gx, n), back = Down(gback, b * t * 3 * c);
  for (int64_t r = 0; r < b * t; ++r) {
    for (int64_t j = 0; j < 3 * c; ++j) {
      const float want = j < c || j >= 2 * c ? -7.0f : inverse[r * c + j - c];
      ASSERT_EQ(back[r * 3 * c + j], want) << "row " << r << " column " << j;
    }
  }
}

TEST_F(CudaBackendTest, ElementwiseOps) {
  const int64_t n = 1000, rows = 10, c = 100;
  std::vector<float> x = Random(n, 3.0), a = Random(n), dy = Random(n), s = Random(c);
  for (Activation act : {Activation::kGelu, Activation::kRelu}) {
    std::vector<float> y(n), dx(n);
    float *gx = Up(x), *gdy = Up(dy), *gy = Up(y), *gdx = Up(dx);
    cpu_->ActivationForward(act, x.data(), n, y.data());
    gpu_->ActivationForward(act, gx, n, gy);
    ExpectClose(Down(gy, n), y, 2e-6, 0, "activation");
    cpu_->ActivationBackward(act, x.data(), dy.data(), n, dx.data());
    gpu_->ActivationBackward(act, gx, gdy, n, gdx);
    ExpectClose(Down(gdx, n), dx, 2e-6, 0, "activation backward");
  }
  std::vector<float> sum(n), scaled(n), dx(n), ds(c, 0.0f);
  float *gx = Up(x), *ga = Up(a), *gsum = Up(sum), *gs = Up(s), *gscaled = Up(scaled), *gdy = Up(dy), *gdx = Up(dx),
        *gds = Up(ds);
  cpu_->Add(x.data(), a.data(), n, sum.data());
  gpu_->Add(gx, ga, n, gsum);
  EXPECT_EQ(Down(gsum, n), sum);
  cpu_->ChannelScaleForward(x.data(), s.data(), rows, c, scaled.data());
  gpu_->ChannelScaleForward(gx, gs, rows, c, gscaled);
  EXPECT_EQ(Down(gscaled, n), scaled);
  cpu_->ChannelScaleBackward(x.data(), s.data(), dy.data(), rows, c, dx.data(), ds.data(), nullptr);
  gpu_->ChannelScaleBackward(gx, gs, gdy, rows, c, gdx, gds, nullptr);
  EXPECT_EQ(Down(gdx, n), dx);
  ExpectClose(Down(gds, c), ds, 2e-6, 0, "ds");
  // Handing dx on as the next product's bf16 dy (NormBackward's `next`): in bf16 only, dx rounded.
  Tensor dy16 = Tensor::Empty({n}, DType::kBF16, kGpu);
  for (MatmulPrecision precision : {MatmulPrecision::kFp32, MatmulPrecision::kBf16}) {
    ASSERT_TRUE(gpu_->SetMatmulPrecision(precision));
    Bf16Operands next{nullptr, nullptr, false, dy16.data()};
    gpu_->ChannelScaleBackward(gx, gs, gdy, rows, c, gdx, gds, &next);
    EXPECT_EQ(next.dy_rounded, precision == MatmulPrecision::kBf16);
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  EXPECT_EQ(Down(gdx, n), dx);
  EXPECT_EQ(DownBf16(dy16.data(), n), RoundedToBf16(dx)) << "next->dy: dx rounded";
  cpu_->Scale(sum.data(), n, 0.37f);
  gpu_->Scale(gsum, n, 0.37f);
  EXPECT_EQ(Down(gsum, n), sum);
  EXPECT_NEAR(gpu_->SumSquares(gx, n), cpu_->SumSquares(x.data(), n), 1e-12 * cpu_->SumSquares(x.data(), n));
  EXPECT_NEAR(gpu_->MeanRowNorm(gx, rows, c), cpu_->MeanRowNorm(x.data(), rows, c), 1e-12 * c);
}

TEST_F(CudaBackendTest, SigmaReparam) {
  const int64_t out = 48, in = 40;
  std::vector<float> w = Random(out * in, 0.2), u = Random(out), v = Random(in), w_eff(out * in), g_eff = Random(out * in);
  std::vector<float> dw(out * in, 0.0f), g = {1.3f}, sigma = {0.0f}, dg = {0.25f};
  float *gw = Up(w), *gu = Up(u), *gv = Up(v), *gweff = Up(w_eff), *ggeff = Up(g_eff), *gdw = Up(dw), *gg = Up(g),
        *gsigma = Up(sigma), *gdg = Up(dg);
  cpu_->SigmaReparamForward(w.data(), g.data(), out, in, true, u.data(), v.data(), sigma.data(), w_eff.data());
  gpu_->SigmaReparamForward(gw, gg, out, in, true, gu, gv, gsigma, gweff);
  EXPECT_NEAR(Down(gsigma, 1)[0], sigma[0], 1e-5 * sigma[0]);
  ExpectClose(Down(gu, out), u, 1e-5, 0, "u");
  ExpectClose(Down(gv, in), v, 1e-5, 0, "v");
  ExpectClose(Down(gweff, out * in), w_eff, 1e-5, 0, "w_eff");
  cpu_->SigmaReparamBackward(w.data(), g.data(), sigma.data(), u.data(), v.data(), g_eff.data(), out, in, dw.data(),
                             dg.data());
  gpu_->SigmaReparamBackward(gw, gg, gsigma, gu, gv, ggeff, out, in, gdw, gdg);
  EXPECT_NEAR(Down(gdg, 1)[0], dg[0], 1e-5 * std::abs(dg[0]) + 1e-6) << "dg (accumulated onto 0.25)";
  ExpectClose(Down(gdw, out * in), dw, 1e-5, 0, "dw");
  gpu_->QueueValue(gsigma);  // the telemetry's read of σ
  EXPECT_EQ(gpu_->ReadQueued(), std::vector<double>{Down(gsigma, 1)[0]});
}

// The batched σ-reparam (every layer of a model in a few launches) against the CPU's
// single-layer ops, layer by layer: four shapes (out > in, out < in, odd sizes, and one of more
// than 4 elements a thread of the elementwise kernels: two of their batches of 4), the
// power-iteration update and without it, then the backward (dw and dg accumulated).
TEST_F(CudaBackendTest, SigmaReparamEachIsEachLayersOp) {
  struct Shape {
    int64_t out, in;
  };
  const std::vector<Shape> shapes = {{96, 32}, {32, 130}, {67, 17}, {300, 290}};
  struct Host {
    std::vector<float> w, g, u, v, sigma, w_eff, g_eff, dw, dg;
  };
  std::vector<Host> cpu;
  std::vector<Backend::SigmaReparamLayer> layers;
  for (const Shape& s : shapes) {
    Host h{Random(s.out * s.in, 0.2),
           {1.1f},
           Random(s.out),
           Random(s.in),
           {0.0f},
           std::vector<float>(s.out * s.in),
           Random(s.out * s.in),
           std::vector<float>(s.out * s.in, 0.5f),
           {0.25f}};
    layers.push_back(
        {Up(h.w), Up(h.g), s.out, s.in, Up(h.u), Up(h.v), Up(h.sigma), Up(h.w_eff), Up(h.g_eff), Up(h.dw), Up(h.dg)});
    cpu.push_back(std::move(h));
  }
  for (bool update : {true, false}) {
    SCOPED_TRACE(update ? "with the update" : "without the update");
    gpu_->SigmaReparamForwardEach(layers, update);
    for (size_t k = 0; k < shapes.size(); ++k) {
      Host& h = cpu[k];
      const Shape& s = shapes[k];
      cpu_->SigmaReparamForward(h.w.data(), h.g.data(), s.out, s.in, update, h.u.data(), h.v.data(), h.sigma.data(),
                                h.w_eff.data());
      EXPECT_NEAR(Down(layers[k].sigma, 1)[0], h.sigma[0], 1e-5 * std::abs(h.sigma[0])) << k;
      ExpectClose(Down(layers[k].u, s.out), h.u, 1e-5, 0, "u");
      ExpectClose(Down(layers[k].v, s.in), h.v, 1e-5, 0, "v");
      ExpectClose(Down(layers[k].w_eff, s.out * s.in), h.w_eff, 1e-5, 0, "w_eff");
    }
  }
  gpu_->SigmaReparamBackwardEach(layers);
  for (size_t k = 0; k < shapes.size(); ++k) {
    Host& h = cpu[k];
    const Shape& s = shapes[k];
    cpu_->SigmaReparamBackward(h.w.data(), h.g.data(), h.sigma.data(), h.u.data(), h.v.data(), h.g_eff.data(), s.out,
                               s.in, h.dw.data(), h.dg.data());
    EXPECT_NEAR(Down(layers[k].dg, 1)[0], h.dg[0], 1e-5 * std::abs(h.dg[0]) + 1e-6) << k;
    ExpectClose(Down(layers[k].dw, s.out * s.in), h.dw, 1e-5, 0, "dw (accumulated onto 0.5)");
  }
}

TEST_F(CudaBackendTest, CrossEntropyWithCapAndZLoss) {
  const int64_t n = 37, v = 1031;  // odd sizes: partial blocks
  for (CrossEntropyOptions opt : {CrossEntropyOptions{}, CrossEntropyOptions{.soft_cap = 15.0f, .z_loss = 1e-4f}}) {
    std::vector<float> logits = Random(n * v, 4.0), lse(n), dlogits(n * v);
    std::vector<int32_t> targets(n);
    for (int64_t i = 0; i < n; ++i) targets[i] = static_cast<int32_t>((i * 97) % v);
    float *gl = Up(logits), *glse = Up(lse), *gd = Up(dlogits);
    int32_t* gt = Up(targets);
    CrossEntropyStats cs, gs;
    cpu_->CrossEntropyForward(logits.data(), targets.data(), n, v, opt, lse.data(), &cs);
    gpu_->CrossEntropyForward(gl, gt, n, v, opt, glse, &gs);
    ExpectClose(Down(glse, n), lse, 2e-6, 0, "lse");
    EXPECT_NEAR(gs.loss, cs.loss, 2e-6 * cs.loss);
    EXPECT_NEAR(gs.ce_loss, cs.ce_loss, 2e-6 * cs.ce_loss);
    EXPECT_EQ(gs.max_logit, cs.max_logit);
    cpu_->CrossEntropyBackward(logits.data(), targets.data(), lse.data(), n, v, opt, 0.7f, dlogits.data());
    gpu_->CrossEntropyBackward(gl, gt, glse, n, v, opt, 0.7f, gd);
    ExpectClose(Down(gd, n * v), dlogits, 1e-5, 0, "dlogits");
    gpu_->CrossEntropyBackward(gl, gt, glse, n, v, opt, 0.7f, gl);  // in place, as the model calls it
    EXPECT_TRUE(SameBits(Down(gl, n * v), Down(gd, n * v))) << "in place";
  }
}

TEST_F(CudaBackendTest, AdamWMatchesTheCpuBitForBit) {
  const int64_t n = 4099;
  std::vector<float> p = Random(n), g = Random(n), m = Random(n, 0.1), v = Random(n, 0.1);
  for (float& x : v) x = std::abs(x);
  float *gp = Up(p), *gg = Up(g), *gm = Up(m), *gv = Up(v);
  cpu_->AdamW(p.data(), g.data(), m.data(), v.data(), n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.19f, 0.0975f, 0.8f);
  gpu_->AdamW(gp, gg, gm, gv, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.19f, 0.0975f, 0.8f);
  EXPECT_EQ(Down(gp, n), p);
  EXPECT_EQ(Down(gm, n), m);
  EXPECT_EQ(Down(gv, n), v);
}

TEST_F(CudaBackendTest, RunsAreBitwiseRepeatable) {
  const int64_t b = 2, t = 64, h = 4, hd = 16, n = b * t * h * hd;
  AttentionOptions opt;
  opt.scale = 0.25f;
  opt.soft_cap = 5.0f;
  std::vector<float> q = Random(n), k = Random(n), v = Random(n), dout = Random(n), zeros(n, 0.0f);
  std::vector<float> probs(b * h * t * t), lse(b * h * t);
  float *gq = Up(q), *gk = Up(k), *gv = Up(v), *gdout = Up(dout), *gout = Up(zeros), *gprobs = Up(probs),
        *glse = Up(lse), *gdq = Up(zeros), *gdk = Up(zeros), *gdv = Up(zeros);
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    const AttentionStrides ld = AttentionStrides::Contiguous(h * hd);
    gpu_->AttentionForward(gq, gk, gv, b, t, h, hd, opt, ld, gout, gprobs, glse, nullptr, nullptr, nullptr);
    gpu_->AttentionBackward(gq, gk, gv, gout, gprobs, glse, gdout, b, t, h, hd, opt, ld, nullptr, gdq, gdk, gdv);
    std::vector<float> got = Down(gdq, n);
    if (run == 0) first = got;
    else EXPECT_EQ(got, first);
  }
  std::vector<float> x = Random(512 * 64);
  float* gx = Up(x);
  std::vector<float> db1(64, 0.0f), db2(64, 0.0f);
  float *gdb1 = Up(db1), *gdb2 = Up(db2), *gw = Up(Random(64 * 64)), *gdw = Up(std::vector<float>(64 * 64, 0.0f));
  gpu_->LinearBackward(gx, gw, gx, 512, 64, 64, nullptr, gdw, gdb1, nullptr);
  gpu_->LinearBackward(gx, gw, gx, 512, 64, 64, nullptr, gdw, gdb2, nullptr);
  EXPECT_EQ(Down(gdb1, 64), Down(gdb2, 64));
  EXPECT_EQ(gpu_->SumSquares(gx, 512 * 64), gpu_->SumSquares(gx, 512 * 64));
}

// bf16 matrix products: inputs rounded to 8 significant bits (relative error ≤ 2^-9 each),
// fp32 accumulation. A dot product of K terms then carries ~2^-9·sqrt(K)/sqrt(K) relative
// error per term, summing to well under 1% of the output's largest value for these sizes;
// 1e-2 of the largest value is the bar (and fp32 stays at 1e-5 after switching back).
TEST_F(CudaBackendTest, Bf16MatrixProductsAreWithinBf16Rounding) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const int64_t n = 128, in = 256, out = 192;
  std::vector<float> x = Random(n * in), w = Random(out * in, 0.1), dy = Random(n * out);
  std::vector<float> y(n * out), dx(n * in), dw(out * in, 0.0f);
  float *gx = Up(x), *gw = Up(w), *gdy = Up(dy), *gy = Up(y), *gdx = Up(dx), *gdw = Up(dw);
  cpu_->LinearForward(x.data(), w.data(), nullptr, n, in, out, y.data(), nullptr, nullptr);
  gpu_->LinearForward(gx, gw, nullptr, n, in, out, gy, nullptr, nullptr);
  ExpectClose(Down(gy, n * out), y, 1e-2, 0, "bf16 y");
  cpu_->LinearBackward(x.data(), w.data(), dy.data(), n, in, out, dx.data(), dw.data(), nullptr, nullptr);
  gpu_->LinearBackward(gx, gw, gdy, n, in, out, gdx, gdw, nullptr, nullptr);
  ExpectClose(Down(gdx, n * in), dx, 1e-2, 0, "bf16 dx");
  ExpectClose(Down(gdw, out * in), dw, 1e-2, 0, "bf16 dw");
  const int64_t b = 2, t = 48, h = 4, hd = 32, m = b * t * h * hd;
  AttentionOptions opt;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  opt.soft_cap = 5.0f;
  std::vector<float> q = Random(m), k = Random(m), v = Random(m), o(m), probs(b * h * t * t), lse(b * h * t);
  float *gq = Up(q), *gk = Up(k), *gv = Up(v), *go = Up(o), *gp = Up(probs), *gl = Up(lse);
  const AttentionStrides ld = AttentionStrides::Contiguous(h * hd);
  cpu_->AttentionForward(q.data(), k.data(), v.data(), b, t, h, hd, opt, ld, o.data(), probs.data(), lse.data(),
                         nullptr, nullptr, nullptr);
  gpu_->AttentionForward(gq, gk, gv, b, t, h, hd, opt, ld, go, gp, gl, nullptr, nullptr, nullptr);
  ExpectClose(Down(go, m), o, 2e-2, 0, "bf16 attention out");
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  gpu_->LinearForward(gx, gw, nullptr, n, in, out, gy, nullptr, nullptr);
  ExpectClose(Down(gy, n * out), y, 1e-5, 0, "fp32 again");
}

// The loss head's two ops (product + cross-entropy forward; gradient + the two products)
// against the CPU's: fp32 at the linear layer's tolerance; bf16, where the logits and their
// gradient are stored in bf16, at the bars stated below.
TEST_F(CudaBackendTest, LossHeadMatchesTheCpu) {
  const int64_t n = 48, v = 1031, c = 64;
  const CrossEntropyOptions opt{.soft_cap = 15.0f, .z_loss = 1e-4f};
  std::vector<float> logits(n * v), lse(n), x = Random(n * c, 2.0), w = Random(v * c, 0.1);
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i) targets[i] = static_cast<int32_t>((i * 37) % v);
  CrossEntropyStats cs;
  cpu_->CrossEntropyLinearForward(x.data(), w.data(), targets.data(), n, c, v, opt, logits.data(), lse.data(), &cs,
                                  nullptr, false);
  std::vector<float> dlogits(n * v), dx(n * c), dw(v * c, 0.0f);
  cpu_->CrossEntropyLinearBackward(logits.data(), targets.data(), lse.data(), n, v, opt, 2.0f, x.data(), w.data(), c,
                                   dlogits.data(), dx.data(), dw.data(), nullptr, false);
  float *gl = Up(logits), *glse = Up(lse), *gx = Up(x), *gw = Up(w), *gdl = Up(dlogits);
  int32_t* gt = Up(targets);
  for (MatmulPrecision precision : {MatmulPrecision::kFp32, MatmulPrecision::kBf16}) {
    const bool bf16 = precision == MatmulPrecision::kBf16;
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    ASSERT_TRUE(gpu_->SetMatmulPrecision(precision));
    EXPECT_EQ(gpu_->SavedValueBytes(), bf16 ? 2 : 4);
    // The forward: in bf16 the logits come out of the product rounded to bf16 (each within
    // 2^-9 of itself: ~3e-3 here, |z| ≲ 6), which moves the log-sum-exp by at most about as
    // much; 2e-3 of the largest lse (~7) and of the loss is the bar (fp32: 1e-5, the GEMMs'
    // order).
    CrossEntropyStats gs;
    gpu_->CrossEntropyLinearForward(gx, gw, gt, n, c, v, opt, gl, glse, &gs, nullptr, false);
    ExpectClose(Down(glse, n), lse, bf16 ? 2e-3 : 1e-5, 0, "lse");
    EXPECT_NEAR(gs.loss, cs.loss, (bf16 ? 2e-3 : 1e-5) * cs.loss);
    EXPECT_NEAR(gs.max_logit, cs.max_logit, (bf16 ? 1e-2 : 1e-5) * std::abs(cs.max_logit));
    // The backward from the GPU's own logits: the bf16 products' bar (1e-2 of the largest
    // value) covers the logits' rounding too (a ~0.3% error in p against the target's ~1).
    float *gdx = Up(std::vector<float>(n * c)), *gdw = Up(std::vector<float>(v * c, 0.0f));
    gpu_->CrossEntropyLinearBackward(gl, gt, glse, n, v, opt, 2.0f, gx, gw, c, gdl, gdx, gdw, nullptr, false);
    ExpectClose(Down(gdx, n * c), dx, bf16 ? 1e-2 : 1e-5, 0, "dx");
    ExpectClose(Down(gdw, v * c), dw, bf16 ? 1e-2 : 1e-5, 0, "dw");
    // In place (the logits overwritten with their gradient, as the model calls it): the same
    // bits; dw accumulates.
    const std::vector<float> dx_first = Down(gdx, n * c);
    gpu_->CrossEntropyLinearBackward(gl, gt, glse, n, v, opt, 2.0f, gx, gw, c, gl, gdx, gdw, nullptr, false);
    EXPECT_TRUE(SameBits(LogitRows(gl, n, v), LogitRows(gdl, n, v))) << "the logits' gradient in place";
    EXPECT_TRUE(SameBits(Down(gdx, n * c), dx_first)) << "dx in place";
    std::vector<float> twice = dw;
    for (float& g : twice) g *= 2;
    ExpectClose(Down(gdw, v * c), twice, bf16 ? 1e-2 : 1e-5, 0, "dw after two calls");
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// In bf16 the logits' rows are 64 values apart (128 bytes: cuBLAS's aligned kernels, the loss
// kernels' 16-byte loads) and the head's products split the vocabulary into whole 64s and the
// rest: for a vocabulary under 64 (the rest alone), a multiple of 64 (no rest), one between
// (both) and one of more than four 16-byte packs a thread (9,001: the loss kernels' batches of
// four packs, then single packs, then a value past them), the loss and the gradients are the
// CPU's at the bf16 bars of LossHeadMatchesTheCpu,
// and no op writes the padding (its bits after the forward, the fused forward and the backward
// are what was there before). fp32 keeps the CPU's rows.
TEST_F(CudaBackendTest, LossHeadPadsTheLogitsRowsInBf16) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  EXPECT_EQ(gpu_->LogitsRowStride(50257), 50257);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  EXPECT_EQ(gpu_->LogitsRowStride(50257), 50304);
  EXPECT_EQ(gpu_->LogitsRowStride(256000), 256000);
  const int64_t n = 24, c = 64;
  const CrossEntropyOptions opt{.soft_cap = 15.0f, .z_loss = 1e-4f};
  for (int64_t v : {40, 1024, 1031, 9001}) {
    SCOPED_TRACE(v);
    const int64_t ld = gpu_->LogitsRowStride(v);
    ASSERT_EQ(ld % 64, 0);
    ASSERT_LT(ld - v, 64);
    std::vector<float> x = Random(n * c, 2.0), w = Random(v * c, 0.1), lse(n), logits(n * v), dx(n * c),
                       dw(v * c, 0.0f);
    std::vector<int32_t> targets(n);
    for (int64_t i = 0; i < n; ++i) targets[i] = static_cast<int32_t>((i * 37) % v);
    CrossEntropyStats cs;
    cpu_->CrossEntropyLinearForward(x.data(), w.data(), targets.data(), n, c, v, opt, logits.data(), lse.data(), &cs,
                                    nullptr, false);
    cpu_->CrossEntropyLinearBackward(logits.data(), targets.data(), lse.data(), n, v, opt, 1.0f, x.data(), w.data(), c,
                                     logits.data(), dx.data(), dw.data(), nullptr, false);
    float *gx = Up(x), *gw = Up(w), *glse = Up(std::vector<float>(n));
    int32_t* gt = Up(targets);
    std::vector<uint16_t> sentinel(n * ld);
    for (int64_t i = 0; i < n * ld; ++i) sentinel[i] = static_cast<uint16_t>(0x7f80 | (i % 97 + 1));  // NaNs
    const auto padding = [&](const void* d) {
      std::vector<uint16_t> bits(n * ld), pad;
      Tensor t = Tensor::Empty({n * ld}, DType::kBF16, kGpu);
      gpu_->Copy(static_cast<const float*>(d), n * ld / 2, t.f32());
      t.CopyToHost(bits.data());
      for (int64_t i = 0; i < n; ++i) pad.insert(pad.end(), bits.begin() + i * ld + v, bits.begin() + (i + 1) * ld);
      return pad;
    };
    std::vector<uint16_t> want;
    for (int64_t i = 0; i < n; ++i)
      want.insert(want.end(), sentinel.begin() + i * ld + v, sentinel.begin() + (i + 1) * ld);
    for (bool fused : {false, true}) {
      SCOPED_TRACE(fused ? "fused" : "two kernels");
      Tensor gl = Tensor::Empty({n * ld}, DType::kBF16, kGpu);
      gl.CopyFromHost(sentinel.data());
      keep_.push_back(gl);
      CrossEntropyStats gs;
      const bool ready =
          gpu_->CrossEntropyLinearForward(gx, gw, gt, n, c, v, opt, gl.data(), glse, &gs, nullptr, fused);
      EXPECT_EQ(ready, fused);
      EXPECT_EQ(padding(gl.data()), want) << "the forward wrote the padding";
      ExpectClose(Down(glse, n), lse, 2e-3, 0, "lse");
      EXPECT_NEAR(gs.loss, cs.loss, 2e-3 * cs.loss);
      float *gdx = Up(std::vector<float>(n * c)), *gdw = Up(std::vector<float>(v * c, 0.0f));
      gpu_->CrossEntropyLinearBackward(gl.data(), gt, glse, n, v, opt, 1.0f, gx, gw, c, gl.data(), gdx, gdw, nullptr,
                                       ready);
      EXPECT_EQ(padding(gl.data()), want) << "the backward wrote the padding";
      ExpectClose(LogitRows(gl.data(), n, v), logits, 1e-2, 0, "the logits' gradient");
      ExpectClose(Down(gdx, n * c), dx, 1e-2, 0, "dx");
      ExpectClose(Down(gdw, v * c), dw, 1e-2, 0, "dw");
    }
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// The training step's loss head (with_gradient): in bf16 one kernel computes the loss and
// writes the gradient for dloss = 1 over the logits — the forward's lse and statistics and the
// backward kernel's gradient bit for bit — and the backward's products scale by dloss: at
// dloss = 2 (a power of two: the scaling is exact wherever it is applied) dx and dw are the
// two-kernel path's bits; at dloss = 0.3 the gradient is rounded before the scaling, not
// after, which moves dx and dw by at most bf16's rounding (2^-8 of a value: 1e-2 of the
// largest is the products' bar). fp32 has no such kernel: with_gradient is declined.
TEST_F(CudaBackendTest, LossHeadComputesItsGradientInTheForward) {
  const int64_t n = 40, v = 2053, c = 64;
  const CrossEntropyOptions opt{.soft_cap = 15.0f, .z_loss = 1e-4f};
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i) targets[i] = static_cast<int32_t>((i * 53) % v);
  float *gx = Up(Random(n * c, 2.0)), *gw = Up(Random(v * c, 0.1));
  int32_t* gt = Up(targets);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  {
    float *gl = Up(std::vector<float>(n * v)), *glse = Up(std::vector<float>(n));
    EXPECT_FALSE(gpu_->CrossEntropyLinearForward(gx, gw, gt, n, c, v, opt, gl, glse, nullptr, nullptr, true));
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const int64_t logit_floats = n * gpu_->LogitsRowStride(v) / 2;  // bf16, rows padded
  for (float dloss : {2.0f, 0.3f}) {
    SCOPED_TRACE(dloss);
    float *two = Up(std::vector<float>(logit_floats)), *one = Up(std::vector<float>(logit_floats));
    float *lse2 = Up(std::vector<float>(n)), *lse1 = Up(std::vector<float>(n));
    float *dl = Up(std::vector<float>(logit_floats)), *dl1 = Up(std::vector<float>(logit_floats));
    CrossEntropyStats s2, s1;
    EXPECT_FALSE(gpu_->CrossEntropyLinearForward(gx, gw, gt, n, c, v, opt, two, lse2, &s2, nullptr, false));
    ASSERT_TRUE(gpu_->CrossEntropyLinearForward(gx, gw, gt, n, c, v, opt, one, lse1, &s1, nullptr, true));
    EXPECT_TRUE(SameBits(Down(lse1, n), Down(lse2, n))) << "lse";
    EXPECT_EQ(s1.loss, s2.loss);
    EXPECT_EQ(s1.max_logit, s2.max_logit);
    EXPECT_EQ(s1.mean_lse, s2.mean_lse);
    // The gradient in the logits' place: the backward kernel's at dloss = 1.
    float *dx2 = Up(std::vector<float>(n * c)), *dw2 = Up(std::vector<float>(v * c, 0.0f));
    float *dx1 = Up(std::vector<float>(n * c)), *dw1 = Up(std::vector<float>(v * c, 0.0f));
    float *dxr = Up(std::vector<float>(n * c)), *dwr = Up(std::vector<float>(v * c, 0.0f));
    gpu_->CrossEntropyLinearBackward(two, gt, lse2, n, v, opt, 1.0f, gx, gw, c, dl1, dxr, dwr, nullptr, false);
    EXPECT_TRUE(SameBits(LogitRows(one, n, v), LogitRows(dl1, n, v))) << "the gradient over the logits";
    gpu_->CrossEntropyLinearBackward(two, gt, lse2, n, v, opt, dloss, gx, gw, c, dl, dx2, dw2, nullptr, false);
    gpu_->CrossEntropyLinearBackward(one, gt, lse1, n, v, opt, dloss, gx, gw, c, one, dx1, dw1, nullptr, true);
    EXPECT_TRUE(SameBits(LogitRows(one, n, v), LogitRows(dl1, n, v))) << "the gradient left as it was";
    if (dloss == 2.0f) {
      EXPECT_TRUE(SameBits(Down(dx1, n * c), Down(dx2, n * c))) << "dx";
      EXPECT_TRUE(SameBits(Down(dw1, v * c), Down(dw2, v * c))) << "dw";
    } else {
      ExpectClose(Down(dx1, n * c), Down(dx2, n * c), 1e-2, 0, "dx");
      ExpectClose(Down(dw1, v * c), Down(dw2, v * c), 1e-2, 0, "dw");
    }
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// Queued reductions (read back together) give the same bits as the immediate ones, in
// queue order, also past the device batch's capacity (1,024 values), and the CPU's values
// within the reduction-order tolerance.
TEST_F(CudaBackendTest, QueuedReductionsEqualTheImmediateOnes) {
  const int64_t rows = 37, d = 53;
  std::vector<float> x = Random(rows * d);
  float* gx = Up(x);
  std::vector<double> want;
  for (int i = 0; i < 1500; ++i) {
    const int64_t r = 1 + i % rows;  // different sizes, so a mix-up shows
    if (i % 2 == 0) {
      gpu_->QueueSumSquares(gx, r * d);
      want.push_back(gpu_->SumSquares(gx, r * d));
    } else {
      gpu_->QueueMeanRowNorm(gx, r, d);
      want.push_back(gpu_->MeanRowNorm(gx, r, d));
    }
  }
  const std::vector<double> got = gpu_->ReadQueued();
  EXPECT_EQ(got, want);
  EXPECT_TRUE(gpu_->ReadQueued().empty());
  EXPECT_NEAR(want[0], cpu_->SumSquares(x.data(), d), 1e-12 * want[0]);
  EXPECT_NEAR(want[1], cpu_->MeanRowNorm(x.data(), 2, d), 1e-12 * want[1]);
}

// AdamW on many buffers in a few launches: bit for bit the CPU's AdamW on each (sizes across
// the per-block chunk, empty ones, more buffers than one launch takes, per-buffer decay).
TEST_F(CudaBackendTest, AdamWEachIsAdamWOnEach) {
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<Backend::AdamWBuffer> cpu_buffers, gpu_buffers;
  for (int i = 0; i < 100; ++i) {
    const int64_t n = (i * 613) % 3000 * (i % 17 != 0);
    p.push_back(Random(n));
    g.push_back(Random(n));
    m.push_back(Random(n, 0.1));
    v.push_back(Random(n, 0.01));
    for (float& x : v.back()) x = std::abs(x);
  }
  for (int i = 0; i < 100; ++i) {
    const float wd = i % 3 == 0 ? 0.0f : 0.1f;
    const int64_t n = static_cast<int64_t>(p[i].size());
    gpu_buffers.push_back({Up(p[i]), Up(g[i]), Up(m[i]), Up(v[i]), n, wd});
    cpu_buffers.push_back({p[i].data(), g[i].data(), m[i].data(), v[i].data(), n, wd});
  }
  cpu_->AdamWEach(cpu_buffers, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.19f, 0.0975f, 0.7f);
  gpu_->AdamWEach(gpu_buffers, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.19f, 0.0975f, 0.7f);
  for (int i = 0; i < 100; ++i) {
    const int64_t n = gpu_buffers[i].n;
    if (n == 0) continue;
    ASSERT_EQ(Down(gpu_buffers[i].p, n), p[i]) << "p of buffer " << i;
    ASSERT_EQ(Down(gpu_buffers[i].m, n), m[i]) << "m of buffer " << i;
    ASSERT_EQ(Down(gpu_buffers[i].v, n), v[i]) << "v of buffer " << i;
  }
}

// The optimizer's bf16 copy of a weight (AdamWBuffer::p_bf16) is the updated p rounded to
// nearest even, written in AdamW's pass; a forward told it is current (w_rounded) multiplies it
// as it is — x's the one rounding pass left — and gets the bits of a forward that rounds w.
TEST_F(CudaBackendTest, Bf16WeightCopyFromTheOptimizerIsTheForwardsWeightOperand) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const int64_t n = 64, in = 96, out = 80;
  std::vector<float> p = Random(out * in, 0.1), g = Random(out * in), m = Random(out * in, 0.1),
                     v = Random(out * in, 0.01), b = Random(out);
  for (float& e : v) e = std::abs(e);
  Tensor w16 = Tensor::Empty({out * in}, DType::kBF16, kGpu), x16 = Tensor::Empty({n * in}, DType::kBF16, kGpu);
  float *gp = Up(p), *gb = Up(b), *gx = Up(Random(n * in));
  gpu_->AdamWEach({{gp, Up(g), Up(m), Up(v), out * in, 0.1f, w16.data()}}, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.19f, 0.0975f,
                  1.0f);
  const std::vector<float> updated = Down(gp, out * in);
  EXPECT_NE(updated, p);
  EXPECT_EQ(DownBf16(w16.data(), out * in), RoundedToBf16(updated));
  float *y_rounding = Up(std::vector<float>(n * out)), *y_copy = Up(std::vector<float>(n * out));
  gpu_->LinearForward(gx, gp, gb, n, in, out, y_rounding, nullptr, nullptr);
  Bf16Operands kept{x16.data(), w16.data()};
  kept.w_rounded = true;
  ASSERT_TRUE(gpu_->StartKernelProfile());
  gpu_->LinearForward(gx, gp, gb, n, in, out, y_copy, &kept, nullptr);
  std::map<std::string, int64_t> calls;
  for (const Backend::KernelTime& r : gpu_->StopKernelProfile()) calls[r.name] += r.calls;
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  EXPECT_EQ(calls["ToBf16Kernel"], 1) << "x rounded, the weight read as the optimizer left it";
  EXPECT_EQ(Down(y_copy, n * out), Down(y_rounding, n * out));
  EXPECT_TRUE(kept.w_rounded) << "the copy stays current: the next forward reads it too";
}

// The batched sums of squares (a model's gradients in a few launches) give each buffer's
// SumSquares bits, in order: 1,300 buffers of varied sizes (empty ones too), so batches of
// 128 and the queue's 1,024-slot capacity are both crossed, after values already queued.
TEST_F(CudaBackendTest, SumSquaresOfEachEqualsEachSumSquares) {
  std::vector<float> x = Random(70000);
  float* gx = Up(x);
  std::vector<std::pair<const float*, int64_t>> spans;
  std::vector<double> want;
  gpu_->QueueMeanRowNorm(gx, 3, 7);
  want.push_back(gpu_->MeanRowNorm(gx, 3, 7));
  for (int i = 0; i < 1300; ++i) {
    const int64_t n = (i * 7919) % 70000 * (i % 11 != 0);  // every 11th empty
    spans.emplace_back(gx + (i % 13), std::max<int64_t>(0, n - 13));
    want.push_back(gpu_->SumSquares(spans.back().first, spans.back().second));
  }
  gpu_->QueueSumSquaresOfEach(spans);
  EXPECT_EQ(gpu_->ReadQueued(), want);
  EXPECT_NEAR(want[2], cpu_->SumSquares(x.data() + 1, spans[1].second), 1e-12 * want[2]);
}

// bf16 linear forwards through cuBLASLt with the bias, or the bias and GELU, fused into the
// epilogue, and the unfused paths where the epilogue's aux output rules cuBLASLt out (Out not
// a multiple of 8), the activation has no epilogue (ReLU) or no next operand takes the
// activation: the bf16 bar of the test above (1e-2 of the largest value) against the CPU's
// LinearForward then ActivationForward, for the pre-activation (saved in bf16:
// SavedValueBytes() = 2), the activation in fp32 and, with `next`, the next operand — and
// the fp32 copy asked for beside `next` is that operand's value, bit for bit. Out = 1,024 at
// N = 4,200 takes two row chunks of the unfused path's fp32 scratch (16 MB).
TEST_F(CudaBackendTest, CublasLtLinearEpiloguesMatchTheUnfusedOps) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  EXPECT_EQ(gpu_->SavedValueBytes(), 2);
  for (auto [n, in, out] : {std::tuple<int64_t, int64_t, int64_t>{128, 256, 192}, {128, 256, 100}, {4200, 32, 1024}}) {
    SCOPED_TRACE("out " + std::to_string(out));
    std::vector<float> x = Random(n * in), w = Random(out * in, 0.1), b = Random(out);
    std::vector<float> pre(n * out), act(n * out);
    float *gx = Up(x), *gw = Up(w), *gb = Up(b), *gact = Up(act);
    void* gpre = UpBf16(pre);
    Tensor next_x = Tensor::Empty({n * out}, DType::kBF16, kGpu);
    for (Activation a : {Activation::kGelu, Activation::kRelu}) {
      for (bool bias : {true, false}) {
        for (bool next : {false, true}) {
          SCOPED_TRACE(std::string(a == Activation::kGelu ? "gelu" : "relu") + (bias ? " with bias" : "") +
                       (next ? " into next" : ""));
          cpu_->LinearForward(x.data(), w.data(), bias ? b.data() : nullptr, n, in, out, pre.data(), nullptr, nullptr);
          cpu_->ActivationForward(a, pre.data(), n * out, act.data());
          Bf16Operands into{next_x.data(), nullptr};
          gpu_->LinearActivationForward(a, gx, gw, bias ? gb : nullptr, n, in, out, gpre, gact, nullptr,
                                        next ? &into : nullptr);
          EXPECT_EQ(into.x_rounded, next);
          ExpectClose(DownBf16(gpre, n * out), pre, 1e-2, 0, "pre-activation");
          ExpectClose(Down(gact, n * out), act, 1e-2, 0, "activation");
          if (next) {
            const std::vector<float> operand = DownBf16(next_x.data(), n * out);
            ExpectClose(operand, act, 1e-2, 0, "next operand");
            EXPECT_TRUE(SameBits(Down(gact, n * out), operand)) << "y beside next is the operand's value";
          }
        }
      }
      gpu_->LinearForward(gx, gw, gb, n, in, out, gact, nullptr, nullptr);
      cpu_->LinearForward(x.data(), w.data(), b.data(), n, in, out, pre.data(), nullptr, nullptr);
      ExpectClose(Down(gact, n * out), pre, 1e-2, 0, "linear alone");
    }
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// FC1's activation written straight into FC2's bf16 operand (LinearActivationForward's
// `next`) is what FC2's forward reads in place of its x: FC2's forward must not read its fp32
// x then (NaN here), consumes the flag, and gives FC2's output of the ops one by one
// (LinearForward with the bias rounded to bf16 as the fused op rounds it, ActivationForward,
// LinearForward) at the bf16 bar. With and without the fp32 activation written.
TEST_F(CudaBackendTest, ActivationIntoTheNextProductsOperandIsItsRounding) {
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const int64_t n = 96, c = 64, f = 256;
  const std::vector<float> b1 = Random(f);
  float *gx = Up(Random(n * c)), *gw1 = Up(Random(f * c, 0.1)), *gb1 = Up(b1), *gw2 = Up(Random(c * f, 0.1)),
        *gb2 = Up(Random(c)), *nans = Up(std::vector<float>(n * f, NAN)), *gb1_16 = Up(RoundedToBf16(b1));
  const auto bf16 = [&](int64_t values) {
    keep_.push_back(Tensor::Empty({values}, DType::kBF16, kGpu));
    return keep_.back().data();
  };
  float *pre = Up(std::vector<float>(n * f)), *act = Up(std::vector<float>(n * f)), *y = Up(std::vector<float>(n * c));
  gpu_->LinearForward(gx, gw1, gb1_16, n, c, f, pre, nullptr, nullptr);
  gpu_->ActivationForward(Activation::kGelu, pre, n * f, act);
  gpu_->LinearForward(act, gw2, gb2, n, f, c, y, nullptr, nullptr);
  for (bool with_act : {false, true}) {
    SCOPED_TRACE(with_act ? "fp32 activation written too" : "bf16 activation only");
    Bf16Operands n1{bf16(n * c), bf16(f * c)}, n2{bf16(n * f), bf16(c * f)};
    void* pre2 = bf16(n * f);
    float* y2 = Up(std::vector<float>(n * c));
    float* act2 = with_act ? Up(std::vector<float>(n * f)) : nullptr;
    gpu_->LinearActivationForward(Activation::kGelu, gx, gw1, gb1, n, c, f, pre2, act2, &n1, &n2);
    EXPECT_TRUE(n2.x_rounded);
    gpu_->LinearForward(nans, gw2, gb2, n, f, c, y2, &n2, nullptr);
    EXPECT_FALSE(n2.x_rounded);
    ExpectClose(DownBf16(pre2, n * f), Down(pre, n * f), 1e-2, 0, "saved pre-activation");
    ExpectClose(DownBf16(n2.x, n * f), Down(act, n * f), 1e-2, 0, "FC2's operand");
    ExpectClose(Down(y2, n * c), Down(y, n * c), 1e-2, 0, "FC2's output");
    if (with_act) {
      EXPECT_TRUE(SameBits(Down(act2, n * f), DownBf16(n2.x, n * f)));
    }
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// A product's output written straight into the next op's bf16 operand (LinearForward's `next`:
// QKV's output for the tensor-core attention): the product with the bias rounded to bf16 (as
// the bf16 epilogue takes it), rounded once: each value within one bf16 step (2^-8 relative)
// of that product's fp32 output — its rounding, or a neighbour where cuBLAS accumulated in
// another order for the other output type and the value sat at a rounding boundary; y, where
// asked, the operand's values widened. In fp32 next is ignored.
TEST_F(CudaBackendTest, ProductIntoTheNextOperandIsItsRounding) {
  const int64_t n = 96, in = 64, out = 192;
  const std::vector<float> b = Random(out);
  float *gx = Up(Random(n * in)), *gw = Up(Random(out * in, 0.1)), *gb = Up(b), *gb16 = Up(RoundedToBf16(b));
  Bf16Operands ignored{UpBf16(std::vector<float>(n * out)), nullptr, false};
  float* y32 = Up(std::vector<float>(n * out));
  gpu_->LinearForward(gx, gw, gb, n, in, out, y32, nullptr, &ignored);
  EXPECT_FALSE(ignored.x_rounded) << "fp32: next ignored";
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  float* want = Up(std::vector<float>(n * out));
  gpu_->LinearForward(gx, gw, gb16, n, in, out, want, nullptr, nullptr);
  const std::vector<float> product = Down(want, n * out);
  for (bool with_y : {false, true}) {
    SCOPED_TRACE(with_y ? "fp32 y written too" : "bf16 only");
    Bf16Operands next{UpBf16(std::vector<float>(n * out, NAN)), nullptr, false};
    float* y = with_y ? Up(std::vector<float>(n * out, NAN)) : nullptr;
    gpu_->LinearForward(gx, gw, gb, n, in, out, y, nullptr, &next);
    EXPECT_TRUE(next.x_rounded);
    const std::vector<float> got = DownBf16(next.x, n * out);
    int64_t off = 0;
    for (int64_t i = 0; i < n * out; ++i) {
      if (!(std::abs(got[i] - product[i]) <= std::ldexp(std::abs(product[i]), -8))) ++off;
    }
    EXPECT_EQ(off, 0) << "values of next not within one bf16 step of the product";
    if (with_y) EXPECT_TRUE(SameBits(Down(y, n * out), DownBf16(next.x, n * out))) << "y: the operand widened";
  }
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// A norm's output written straight into the next product's bf16 operand (NormForward's and
// AddNormForward's `next`): the plain call's y rounded to nearest even, the statistics and
// the residual sum unchanged, y (when asked for) the same bits; in fp32, `next` is ignored.
TEST_F(CudaBackendTest, NormIntoTheNextProductsOperandIsItsRounding) {
  const int64_t rows = 40, d = 200;
  std::vector<float> x = Random(rows * d, 2.0), a = Random(rows * d), g = Random(d), b = Random(d);
  float *gx = Up(x), *ga = Up(a), *gg = Up(g), *gb = Up(b);
  Tensor x16 = Tensor::Empty({rows * d}, DType::kBF16, kGpu);
  for (bool add : {false, true}) {
    SCOPED_TRACE(add ? "AddNormForward" : "NormForward");
    const auto norm = [&](float* y, float* sum, float* mean, float* rstd, Bf16Operands* next) {
      if (add) {
        gpu_->AddNormForward(NormKind::kLayerNorm, gx, ga, nullptr, gg, gb, rows, d, 1e-5f, sum, y, mean, rstd, next);
      } else {
        gpu_->NormForward(NormKind::kLayerNorm, gx, RowLayout::Contiguous(d), gg, gb, rows, d, 1e-5f, y, mean, rstd,
                          next);
      }
    };
    const std::vector<float> zeros(rows * d, 0.0f), zr(rows, 0.0f);
    float *y = Up(zeros), *sum = Up(zeros), *mean = Up(zr), *rstd = Up(zr);
    norm(y, sum, mean, rstd, nullptr);
    const std::vector<float> want = Down(y, rows * d);
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
    for (bool with_y : {false, true}) {
      Bf16Operands next{x16.data(), nullptr};
      float *y2 = with_y ? Up(zeros) : nullptr, *sum2 = Up(zeros), *mean2 = Up(zr), *rstd2 = Up(zr);
      norm(y2, sum2, mean2, rstd2, &next);
      EXPECT_TRUE(next.x_rounded);
      std::vector<uint16_t> bits(rows * d);
      x16.CopyToHost(bits.data());
      for (int64_t i = 0; i < rows * d; ++i) {
        uint32_t u;
        const float r = RoundToBf16(want[i]);
        std::memcpy(&u, &r, 4);
        ASSERT_EQ(bits[i], u >> 16) << "at " << i;
      }
      if (with_y) {
        EXPECT_EQ(Down(y2, rows * d), want);
      }
      EXPECT_EQ(Down(rstd2, rows), Down(rstd, rows));
      if (add) {
        EXPECT_EQ(Down(sum2, rows * d), Down(sum, rows * d));
      }
    }
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
    Bf16Operands ignored{x16.data(), nullptr};
    float* y3 = Up(zeros);
    norm(y3, Up(zeros), Up(zr), Up(zr), &ignored);
    EXPECT_FALSE(ignored.x_rounded);
    EXPECT_EQ(Down(y3, rows * d), want);
  }
}

// A q/k/v norm's output into its block of the attention's kept operands: NormForward's `next`
// lays y's rows out as x's (a block of QKV's [N, 3·C] output, full width or per head), each the
// plain call's row rounded; nothing else of the buffer written.
TEST_F(CudaBackendTest, NormIntoABlockKeepsTheRowLayout) {
  const int64_t n = 24, heads = 4, hd = 32, c = heads * hd, w = 3 * c;
  const std::vector<float> qkv = Random(n * w, 2.0), g = Random(hd * heads), b = Random(hd * heads);
  float *gqkv = Up(qkv), *gg = Up(g), *gb = Up(b);
  for (bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "per head" : "full width");
    const int64_t rows = per_head ? n * heads : n, d = per_head ? hd : c;
    const RowLayout layout = per_head ? RowLayout{heads, w} : RowLayout{1, w};
    const float* x = gqkv + c;  // k's block
    float *y = Up(std::vector<float>(rows * d)), *mean = Up(std::vector<float>(rows)),
          *rstd = Up(std::vector<float>(rows));
    gpu_->NormForward(NormKind::kLayerNorm, x, layout, gg, gb, rows, d, 1e-5f, y, mean, rstd, nullptr);
    const std::vector<float> want = Down(y, rows * d);
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
    std::vector<float> untouched(n * w, 7.0f);
    Bf16Operands kept{UpBf16(untouched), nullptr};
    Bf16Operands into{static_cast<char*>(kept.x) + c * 2, nullptr};
    gpu_->NormForward(NormKind::kLayerNorm, x, layout, gg, gb, rows, d, 1e-5f, nullptr, mean, rstd, &into);
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
    EXPECT_TRUE(into.x_rounded);
    std::vector<float> expected = untouched;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < d; ++j) expected[c + layout.Offset(r, d) + j] = RoundToBf16(want[r * d + j]);
    }
    EXPECT_TRUE(SameBits(DownBf16(kept.x, n * w), expected));
  }
}

// The kernel profile (--profile_step): between Start and Stop each launch, product and copy
// is a row, by name, with its count and non-negative device time; nothing is recorded while
// it is off.
TEST_F(CudaBackendTest, KernelProfileTimesEachLaunchByName) {
  const int64_t n = 64, in = 32, out = 16;
  float *gx = Up(Random(n * in)), *gw = Up(Random(out * in)), *gy = Up(std::vector<float>(n * out));
  float* gsum = Up(std::vector<float>(n * out));
  gpu_->Add(gy, gy, n * out, gsum);  // off: not recorded
  ASSERT_TRUE(gpu_->StartKernelProfile());
  for (int i = 0; i < 3; ++i) {
    gpu_->LinearForward(gx, gw, nullptr, n, in, out, gy, nullptr, nullptr);
    gpu_->Add(gy, gy, n * out, gsum);
  }
  Down(gsum, n * out);  // a copy from the GPU (through a device copy)
  const std::vector<Backend::KernelTime> rows = gpu_->StopKernelProfile();
  std::map<std::string, Backend::KernelTime> by_name;
  for (const Backend::KernelTime& r : rows) {
    EXPECT_GE(r.ms, 0.0) << r.name;
    by_name[r.name] = r;
  }
  ASSERT_EQ(by_name.count("cublasSgemm 64×16×32"), 1u) << rows.size() << " rows, first " << rows[0].name;
  EXPECT_EQ(by_name["cublasSgemm 64×16×32"].calls, 3);
  EXPECT_EQ(by_name["AddKernel"].calls, 3);
  EXPECT_EQ(by_name["cudaMemcpy (from the GPU)"].calls, 1);
  EXPECT_EQ(rows[0].name, "cublasSgemm 64×16×32");  // in order of first launch
  EXPECT_TRUE(gpu_->StopKernelProfile().empty());
}

// The bf16 operands a linear forward keeps for its backward change no result: every
// output is bit for bit the one computed without them (the same rounding, done once), on
// the cuBLASLt path (bias, bias + GELU), the plain bf16 product, and the loss head; and
// what is kept is x and w rounded to nearest even.
TEST_F(CudaBackendTest, KeptBf16OperandsChangeNoResult) {
  EXPECT_FALSE(gpu_->KeepsBf16Operands());  // fp32: nothing to keep
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  EXPECT_TRUE(gpu_->KeepsBf16Operands());
  const int64_t n = 128, in = 256, out = 192;
  std::vector<float> x = Random(n * in), w = Random(out * in, 0.1), b = Random(out), dy = Random(n * out);
  float *gx = Up(x), *gw = Up(w), *gb = Up(b), *gdy = Up(dy);
  Tensor x16 = Tensor::Empty({n * in}, DType::kBF16, kGpu), w16 = Tensor::Empty({out * in}, DType::kBF16, kGpu);
  Bf16Operands kept{x16.data(), w16.data()};
  // Lt bias epilogue, Lt bias + GELU (into a next operand; y the saved bf16 pre-activation),
  // plain bf16 product
  for (int path = 0; path < 3; ++path) {
    SCOPED_TRACE("path " + std::to_string(path));
    const float* bias = path == 2 ? nullptr : gb;
    std::vector<float*> y(2), act(2), dx(2), dw(2), db(2);
    std::vector<Tensor> next_x(2);
    for (int with = 0; with < 2; ++with) {
      y[with] = Up(std::vector<float>(n * out));
      act[with] = Up(std::vector<float>(n * out));
      dx[with] = Up(std::vector<float>(n * in));
      dw[with] = Up(std::vector<float>(out * in, 0.5f));
      db[with] = Up(std::vector<float>(out, 0.25f));
      Bf16Operands* k = with ? &kept : nullptr;
      if (path == 1) {
        next_x[with] = Tensor::Empty({n * out}, DType::kBF16, kGpu);
        Bf16Operands next{next_x[with].data(), nullptr};
        gpu_->LinearActivationForward(Activation::kGelu, gx, gw, bias, n, in, out, y[with], act[with], k, &next);
      } else {
        gpu_->LinearForward(gx, gw, bias, n, in, out, y[with], k, nullptr);
      }
      gpu_->LinearBackward(gx, gw, gdy, n, in, out, dx[with], dw[with], db[with], k);
    }
    EXPECT_EQ(Down(y[1], n * out), Down(y[0], n * out));
    if (path == 1) {
      EXPECT_EQ(Down(act[1], n * out), Down(act[0], n * out));
      EXPECT_EQ(DownBf16(next_x[1].data(), n * out), DownBf16(next_x[0].data(), n * out));
    }
    EXPECT_EQ(Down(dx[1], n * in), Down(dx[0], n * in));
    EXPECT_EQ(Down(dw[1], out * in), Down(dw[0], out * in));
    EXPECT_EQ(Down(db[1], out), Down(db[0], out));
    for (const auto& [t, host] : {std::pair{&x16, &x}, std::pair{&w16, &w}}) {
      std::vector<uint16_t> bits(host->size());
      t->CopyToHost(bits.data());
      for (size_t i = 0; i < bits.size(); ++i) {
        uint32_t u;
        const float r = RoundToBf16((*host)[i]);
        std::memcpy(&u, &r, 4);
        ASSERT_EQ(bits[i], u >> 16) << (t == &x16 ? "x" : "w") << " at " << i;
      }
    }
  }
  // The loss head: its LinearForward keeps x and w; the fused backward reads them.
  const int64_t v = 1031, c = 64;
  const CrossEntropyOptions opt{.soft_cap = 15.0f, .z_loss = 1e-4f};
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i) targets[i] = static_cast<int32_t>((i * 37) % v);
  float *hx = Up(Random(n * c)), *hw = Up(Random(v * c, 0.1)), *logits = Up(std::vector<float>(n * v));
  float *lse = Up(std::vector<float>(n)), *dl = Up(std::vector<float>(n * v));
  int32_t* gt = Up(targets);
  Tensor hx16 = Tensor::Empty({n * c}, DType::kBF16, kGpu), hw16 = Tensor::Empty({v * c}, DType::kBF16, kGpu);
  Bf16Operands head{hx16.data(), hw16.data()};
  gpu_->CrossEntropyLinearForward(hx, hw, gt, n, c, v, opt, logits, lse, nullptr, &head, false);
  std::vector<std::vector<float>> dxs, dws;
  for (const Bf16Operands* k : {static_cast<const Bf16Operands*>(nullptr), static_cast<const Bf16Operands*>(&head)}) {
    float *hdx = Up(std::vector<float>(n * c)), *hdw = Up(std::vector<float>(v * c, 0.0f));
    gpu_->CrossEntropyLinearBackward(logits, gt, lse, n, v, opt, 1.0f, hx, hw, c, dl, hdx, hdw, k, false);
    dxs.push_back(Down(hdx, n * c));
    dws.push_back(Down(hdw, v * c));
  }
  EXPECT_EQ(dxs[1], dxs[0]);
  EXPECT_EQ(dws[1], dws[0]);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
}

// The MLP's activation backward fused into FC1's backward. fp32: the CPU's two ops at the
// linear layer's bars. bf16, where d_pre goes straight to bf16 with its bias sums taken on
// the way from the bf16 saved pre-activation: bit for bit the GPU's own ActivationBackward
// (of that pre-activation widened) then LinearBackward.
TEST_F(CudaBackendTest, LinearActivationBackwardIsTheActivationsThenTheLinears) {
  const int64_t n = 96, in = 64, out = 200;
  std::vector<float> x = Random(n * in), w = Random(out * in, 0.1), pre = Random(n * out, 2.0), dy = Random(n * out);
  float *gx = Up(x), *gw = Up(w), *gpre = Up(pre), *gdy = Up(dy);
  for (Activation act : {Activation::kGelu, Activation::kRelu}) {
    SCOPED_TRACE(act == Activation::kGelu ? "gelu" : "relu");
    std::vector<float> d_pre(n * out), dx(n * in), dw(out * in, 0.5f), db(out, 0.25f);
    cpu_->LinearActivationBackward(act, x.data(), w.data(), pre.data(), dy.data(), n, in, out, d_pre.data(),
                                   dx.data(), dw.data(), db.data(), nullptr);
    float *gd = Up(d_pre), *gdx = Up(dx), *gdw = Up(std::vector<float>(out * in, 0.5f));
    float* gdb = Up(std::vector<float>(out, 0.25f));
    gpu_->LinearActivationBackward(act, gx, gw, gpre, gdy, n, in, out, gd, gdx, gdw, gdb, nullptr);
    ExpectClose(Down(gdx, n * in), dx, 1e-5, 0, "fp32 dx");
    ExpectClose(Down(gdw, out * in), dw, 1e-5, 0, "fp32 dw");
    ExpectClose(Down(gdb, out), db, 1e-5, 0, "fp32 db");

    // bf16: the pre-activation as the bf16 forward saves it; the unfused ops read it widened.
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
    void* gpre16 = UpBf16(pre);
    float* gpre_widened = Up(RoundedToBf16(pre));
    std::vector<std::vector<float>> got;
    for (bool fused : {true, false}) {
      float *d = Up(d_pre), *ddx = Up(dx), *ddw = Up(std::vector<float>(out * in, 0.5f));
      float* ddb = Up(std::vector<float>(out, 0.25f));
      if (fused) {
        gpu_->LinearActivationBackward(act, gx, gw, gpre16, gdy, n, in, out, d, ddx, ddw, ddb, nullptr);
      } else {
        gpu_->ActivationBackward(act, gpre_widened, gdy, n * out, d);
        gpu_->LinearBackward(gx, gw, d, n, in, out, ddx, ddw, ddb, nullptr);
      }
      got.push_back(Down(ddx, n * in));
      got.push_back(Down(ddw, out * in));
      got.push_back(Down(ddb, out));
    }
    EXPECT_EQ(got[0], got[3]) << "bf16 dx";
    EXPECT_EQ(got[1], got[4]) << "bf16 dw";
    EXPECT_EQ(got[2], got[5]) << "bf16 db";
    ExpectClose(got[0], dx, 1e-2, 0, "bf16 dx against the CPU's fp32");
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  }
}

// The MLP's backward (FC2's, then FC1's with the activation's). fp32: the CPU's at the linear
// layer's bars. bf16, where FC2's product writes FC1's pre-activation gradient through
// cuBLASLt's DGELU epilogue (hidden 192), or dh in bf16 for FC1's gradient pass (hidden 100:
// not a multiple of 8, no cuBLASLt kernel): FC2's weight and bias gradients (which read neither)
// bit for bit the GPU's own two ops', the rest at the bf16 products' bar against the CPU's fp32.
TEST_F(CudaBackendTest, MlpBackwardIsFc2sThenFc1s) {
  for (int64_t hidden : {192, 100}) {
    SCOPED_TRACE("hidden " + std::to_string(hidden));
    MlpBackwardCase(hidden);
  }
}

void CudaBackendTest::MlpBackwardCase(int64_t hidden) {
  const int64_t n = 80, in = 48, out = 48;
  std::vector<float> x = Random(n * in), w1 = Random(hidden * in, 0.2), pre = Random(n * hidden, 2.0),
                     h = Random(n * hidden), w2 = Random(out * hidden, 0.1), dz = Random(n * out);
  float *gx = Up(x), *gw1 = Up(w1), *gh = Up(h), *gw2 = Up(w2), *gdz = Up(dz);
  const void* gpre = Up(pre);
  std::vector<float> dh(n * hidden), d_pre(n * hidden), dx(n * in), dw1(hidden * in, 0.5f), db1(hidden, 0.25f),
      dw2(out * hidden, -0.5f), db2(out, 1.0f);
  cpu_->MlpBackward(Activation::kGelu, {x.data(), w1.data(), nullptr, dw1.data(), db1.data()},
                    {h.data(), w2.data(), nullptr, dw2.data(), db2.data()}, pre.data(), dz.data(), n, in, hidden, out,
                    dh.data(), d_pre.data(), dx.data());
  const std::vector<std::vector<float>> want = {dx, dw1, db1, dw2, db2};
  const char* names[] = {"dx", "dw1", "db1", "dw2", "db2"};
  // The GPU's MlpBackward (fused) or its LinearBackward then LinearActivationBackward.
  const auto run = [&](bool fused, const void* gpre) {
    float *gdh = Up(dh), *gd = Up(d_pre), *gdx = Up(dx), *gdw1 = Up(std::vector<float>(hidden * in, 0.5f)),
          *gdb1 = Up(std::vector<float>(hidden, 0.25f)), *gdw2 = Up(std::vector<float>(out * hidden, -0.5f)),
          *gdb2 = Up(std::vector<float>(out, 1.0f));
    if (fused) {
      gpu_->MlpBackward(Activation::kGelu, {gx, gw1, nullptr, gdw1, gdb1}, {gh, gw2, nullptr, gdw2, gdb2}, gpre, gdz, n,
                        in, hidden, out, gdh, gd, gdx);
    } else {
      gpu_->LinearBackward(gh, gw2, gdz, n, hidden, out, gdh, gdw2, gdb2, nullptr);
      gpu_->LinearActivationBackward(Activation::kGelu, gx, gw1, gpre, gdh, n, in, hidden, gd, gdx, gdw1, gdb1,
                                     nullptr);
    }
    return std::vector<std::vector<float>>{Down(gdx, n * in), Down(gdw1, hidden * in), Down(gdb1, hidden),
                                           Down(gdw2, out * hidden), Down(gdb2, out)};
  };
  const std::vector<std::vector<float>> fp32 = run(true, gpre);
  for (int i = 0; i < 5; ++i) ExpectClose(fp32[i], want[i], 1e-5, 0, names[i]);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const void* gpre16 = UpBf16(pre);  // as the bf16 forward saves it
  const std::vector<std::vector<float>> fused = run(true, gpre16), apart = run(false, gpre16);
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  EXPECT_EQ(fused[3], apart[3]) << "bf16 dw2";
  EXPECT_EQ(fused[4], apart[4]) << "bf16 db2";
  for (int i = 0; i < 5; ++i) ExpectClose(fused[i], want[i], 1e-2, 0, names[i]);
}

// A bias gradient in bf16 comes from the weight-gradient product's cuBLASLt BGRADB epilogue
// (FC1's here, under MlpBackward's DGELU path; QKV's in AttentionQkvBackward): no column-sum
// pass over the bf16 operand, and the sums those of the operand the product read — within
// fp32 summation's bound in any order, |Δ| ≤ (n + 1)·2⁻²⁴·(Σ_r |d_rj| + |db_j|), of the
// sums of d_pre as written (bf16, in d_pre's first half), added to what db held (0.25).
TEST_F(CudaBackendTest, Bf16BiasGradientComesFromTheWeightProduct) {
  const int64_t n = 96, in = 48, hidden = 64, out = 48;
  float *gx = Up(Random(n * in)), *gw1 = Up(Random(hidden * in, 0.2)), *gh = Up(Random(n * hidden)),
        *gw2 = Up(Random(out * hidden, 0.1)), *gdz = Up(Random(n * out));
  float *gdh = Up(std::vector<float>(n * hidden)), *gd = Up(std::vector<float>(n * hidden)),
        *gdx = Up(std::vector<float>(n * in)), *gdw1 = Up(std::vector<float>(hidden * in)),
        *gdb1 = Up(std::vector<float>(hidden, 0.25f)), *gdw2 = Up(std::vector<float>(out * hidden)),
        *gdb2 = Up(std::vector<float>(out));
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
  const void* gpre = UpBf16(Random(n * hidden, 2.0));
  ASSERT_TRUE(gpu_->StartKernelProfile());
  gpu_->MlpBackward(Activation::kGelu, {gx, gw1, nullptr, gdw1, gdb1}, {gh, gw2, nullptr, gdw2, gdb2}, gpre, gdz, n, in,
                    hidden, out, gdh, gd, gdx);
  const std::vector<Backend::KernelTime> rows = gpu_->StopKernelProfile();
  ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  std::map<std::string, int64_t> calls;
  for (const Backend::KernelTime& r : rows) calls[r.name] += r.calls;
  EXPECT_EQ(calls["cublasLt bf16 + DGELU 96×64×48"], 1);
  EXPECT_EQ(calls["cublasLt bf16 + BGRADB 64×48×96"], 1) << "FC1's weight gradient with its bias gradient";
  EXPECT_EQ(calls.count("ColumnPartialsKernel"), 0u);
  const std::vector<float> d = DownBf16(gd, n * hidden), db = Down(gdb1, hidden);
  for (int64_t j = 0; j < hidden; ++j) {
    double sum = 0.25, magnitude = 0.25;
    for (int64_t r = 0; r < n; ++r) sum += d[r * hidden + j], magnitude += std::abs(d[r * hidden + j]);
    EXPECT_NEAR(db[j], sum, (n + 1) * std::ldexp(1.0, -24) * magnitude) << "column " << j;
  }
}

// The attention's backward into QKV's, through the q/k/v norms between them: the blocks read
// in place (the baseline), q and k behind full-width LayerNorms (QK norm), and all three
// behind per-head RMSNorms. bf16 with the tensor-core kernels, which write the attention's
// gradients in bf16 (and the norms theirs): against the CPU's fp32 op on the same inputs (q, k,
// v and dO bf16-valued, as the attention's own test) at the tensor-core attention's gradient
// bar, 1.5e-2 of the largest value, for every output — QKV's dx, dw and bias, the norms' gains
// and biases. In place, dx and dw also bit for bit the GPU's own AttentionBackward (fp32 dqkv)
// then LinearBackward (which rounds dqkv to bf16 as the kernels do), and the bias gradient,
// summed from the rounded values instead of the fp32 ones, within that rounding:
// |Δdb_j| ≤ 2⁻⁹·Σ_r |dqkv_rj|. With the GEMM kernel (no bf16 path): the ops' bits. dx starts
// at 0.5: overwritten, or added to where there is no N1 (the QKV-norm case, accumulate_dx).
TEST_F(CudaBackendTest, AttentionQkvBackwardIsTheAttentionsThenTheNormsThenQkvs) {
  const int64_t b = 2, t = 100, h = 2, hd = 64, c = h * hd, n = b * t, w3 = 3 * c;
  const AttentionOptions opt = EveryAttentionOption(hd)[1];  // soft cap
  const std::vector<float> qkv = RoundedToBf16(Random(n * w3)), dout = RoundedToBf16(Random(n * c)), x = Random(n * c),
                           w = Random(w3 * c, 0.1);
  float *gqkv = Up(qkv), *gdout = Up(dout), *gx = Up(x), *gw = Up(w);
  struct Case {
    const char* name;
    bool q_and_k, v, per_head;
    NormKind kind;
    bool accumulate_dx;
  };
  for (const Case& cs : {Case{"in place", false, false, false, NormKind::kLayerNorm, false},
                         Case{"QK LayerNorm", true, false, false, NormKind::kLayerNorm, false},
                         Case{"QKV RMSNorm per head, dx added to", true, true, true, NormKind::kRMSNorm, true}}) {
    SCOPED_TRACE(cs.name);
    const int64_t groups = cs.per_head ? h : 1, rows = n * groups, d = c / groups;
    const RowLayout layout{groups, w3};
    const bool layer = cs.kind == NormKind::kLayerNorm;
    // The attention's inputs: a block in place, or its norm's output (bf16-valued), the norm's
    // statistics from the CPU's forward; the same on both sides.
    std::vector<std::vector<float>> in(3), mean(3), rstd(3), gain(3), bias(3);  // bias: the forward's only
    std::vector<const float*> g_in(3), g_mean(3), g_rstd(3), g_gain(3);
    AttentionStrides ld{w3, w3, w3, w3, w3, w3};
    bool normed[3] = {cs.q_and_k, cs.q_and_k, cs.v};
    for (int i = 0; i < 3; ++i) {
      if (!normed[i]) {
        g_in[i] = gqkv + i * c;
        continue;
      }
      in[i].resize(n * c), mean[i].resize(rows), rstd[i].resize(rows);
      gain[i] = Random(d, 0.3), bias[i] = Random(d, 0.1);
      for (float& e : gain[i]) e += 1.0f;
      cpu_->NormForward(cs.kind, qkv.data() + i * c, layout, gain[i].data(), layer ? bias[i].data() : nullptr, rows, d,
                        1e-5f, in[i].data(), mean[i].data(), rstd[i].data(), nullptr);
      in[i] = RoundedToBf16(in[i]);
      g_in[i] = Up(in[i]), g_mean[i] = Up(mean[i]), g_rstd[i] = Up(rstd[i]), g_gain[i] = Up(gain[i]);
      (i == 0 ? ld.q : i == 1 ? ld.k : ld.v) = c;
      (i == 0 ? ld.dq : i == 1 ? ld.dk : ld.dv) = c;
    }
    const auto cpu_in = [&](int i) { return normed[i] ? in[i].data() : qkv.data() + i * c; };
    // Every output: [dx, dw, db, then each norm's dg and db]; norms' gradients start at 0.5.
    using Ptrs = std::vector<const float*>;
    const auto run = [&](Backend* be, const float* bqkv, const Ptrs& bin, const float* bout, const float* bprobs,
                         const float* blse, const float* bdout, const float* bx, const float* bw, const Ptrs& bmean,
                         const Ptrs& brstd, const Ptrs& bgain, bool one_op, std::vector<float>* dqkv_fp32) {
      const bool host = be == cpu_;
      std::vector<std::vector<float>> bufs;  // host buffers (the CPU) kept alive here
      const auto make = [&](int64_t size, float init) -> float* {
        if (host) return bufs.emplace_back(size, init).data();
        return Up(std::vector<float>(size, init));
      };
      bufs.reserve(32);
      float *dqkv = make(n * w3, 0), *dq = make(n * c, 0), *dk = make(n * c, 0), *dv = make(n * c, 0),
            *dx = make(n * c, 0.5f), *dw = make(w3 * c, 0.5f), *db = make(w3, 0.25f);
      Backend::QkvNorm norm[3];
      std::vector<float*> dg(3, nullptr), dnb(3, nullptr);
      Backend::QkvNorms norms{cs.kind, rows, d, layout};
      for (int i = 0; i < 3; ++i) {
        if (!normed[i]) continue;
        dg[i] = make(d, 0.5f), dnb[i] = layer ? make(d, 0.5f) : nullptr;
        norm[i] = {bgain[i], layer ? bmean[i] : nullptr, brstd[i], dg[i], dnb[i]};
        (i == 0 ? norms.q : i == 1 ? norms.k : norms.v) = &norm[i];
      }
      const Backend::LinearGradients qkv_layer{bx, bw, nullptr, dw, db};
      if (one_op) {
        be->AttentionQkvBackward(bqkv, bin[0], bin[1], bin[2], ld, bout, bprobs, blse, bdout, b, t, h, hd, opt, nullptr,
                                 norms, qkv_layer, dq, dk, dv, dqkv, dx, cs.accumulate_dx);
      } else {  // in place only
        be->AttentionBackward(bin[0], bin[1], bin[2], bout, bprobs, blse, bdout, b, t, h, hd, opt, ld, nullptr, dqkv,
                              dqkv + c, dqkv + 2 * c);
        *dqkv_fp32 = Down(dqkv, n * w3);
        be->LinearBackward(bx, bw, dqkv, n, c, w3, dx, dw, db, nullptr);
      }
      const auto down = [&](const float* p, int64_t size) {
        return host ? std::vector<float>(p, p + size) : Down(p, size);
      };
      std::vector<std::vector<float>> got = {down(dx, n * c), down(dw, w3 * c), down(db, w3)};
      for (int i = 0; i < 3; ++i) {
        if (!normed[i]) continue;
        got.push_back(down(dg[i], d));
        if (layer) got.push_back(down(dnb[i], d));
      }
      return got;
    };
    std::vector<float> out(n * c), probs(b * h * t * t), lse(b * h * t);
    cpu_->AttentionForward(cpu_in(0), cpu_in(1), cpu_in(2), b, t, h, hd, opt, ld, out.data(), probs.data(), lse.data(),
                           nullptr, nullptr, nullptr);
    Ptrs cin = {cpu_in(0), cpu_in(1), cpu_in(2)}, cmean(3), crstd(3), cgain(3);
    for (int i = 0; i < 3; ++i) {
      if (normed[i]) cmean[i] = mean[i].data(), crstd[i] = rstd[i].data(), cgain[i] = gain[i].data();
    }
    const std::vector<std::vector<float>> want =
        run(cpu_, qkv.data(), cin, out.data(), probs.data(), lse.data(), dout.data(), x.data(), w.data(), cmean, crstd,
            cgain, true, nullptr);

    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kBf16));
    for (AttentionKernel kernel : {AttentionKernel::kFused, AttentionKernel::kGemm}) {
      const bool tensor_core = kernel == AttentionKernel::kFused;
      SCOPED_TRACE(tensor_core ? "tensor-core kernels" : "GEMM kernel");
      gpu_->SetAttentionKernel(kernel);
      float *gout = Up(std::vector<float>(n * c)), *glse = Up(std::vector<float>(b * h * t));
      float* gprobs = gpu_->AttentionStoresProbs(hd) ? Up(std::vector<float>(b * h * t * t)) : nullptr;
      gpu_->AttentionForward(g_in[0], g_in[1], g_in[2], b, t, h, hd, opt, ld, gout, gprobs, glse, nullptr, nullptr,
                             nullptr);
      const std::vector<std::vector<float>> got =
          run(gpu_, gqkv, g_in, gout, gprobs, glse, gdout, gx, gw, g_mean, g_rstd, g_gain, true, nullptr);
      ASSERT_EQ(got.size(), want.size());
      const char* names[] = {"dx", "dw", "db", "norm dg", "norm db", "norm dg", "norm db", "norm dg", "norm db"};
      for (size_t i = 0; i < got.size(); ++i) ExpectClose(got[i], want[i], 1.5e-2, 0, names[i]);
      if (cs.q_and_k || cs.v) continue;
      std::vector<float> dqkv_fp32;
      const std::vector<std::vector<float>> two =
          run(gpu_, gqkv, g_in, gout, gprobs, glse, gdout, gx, gw, g_mean, g_rstd, g_gain, false, &dqkv_fp32);
      EXPECT_EQ(got[0], two[0]) << "dx";
      EXPECT_EQ(got[1], two[1]) << "dw";
      if (!tensor_core) {
        EXPECT_EQ(got[2], two[2]) << "db";
        continue;
      }
      for (int64_t j = 0; j < w3; ++j) {
        double bound = 0;
        for (int64_t r = 0; r < n; ++r) bound += std::abs(static_cast<double>(dqkv_fp32[r * w3 + j]));
        ASSERT_LE(std::abs(static_cast<double>(got[2][j]) - two[2][j]), std::ldexp(bound, -9) + 1e-6) << "db " << j;
      }
    }
    gpu_->SetAttentionKernel(AttentionKernel::kGemm);
    ASSERT_TRUE(gpu_->SetMatmulPrecision(MatmulPrecision::kFp32));
  }
}

// The host rounding the bf16 comparisons give both sides: round to nearest, ties to even.
TEST(CudaBackendSetupTest, RoundToBf16TiesToEven) {
  const float ulp = std::ldexp(1.0f, -7);  // bf16's spacing in [1, 2)
  EXPECT_EQ(RoundToBf16(1.0f + ulp / 2), 1.0f);                               // tie, 1 is even
  EXPECT_EQ(RoundToBf16(1.0f + 3 * ulp / 2), 1.0f + 2 * ulp);                 // tie, up to even
  EXPECT_EQ(RoundToBf16(1.0f + ulp / 2 + std::ldexp(1.0f, -20)), 1.0f + ulp);  // past the tie
  EXPECT_EQ(RoundToBf16(-3.0f - ulp), -3.0f);  // a tie in [2, 4), where the spacing is 2·ulp: 3 is even
  EXPECT_EQ(RoundToBf16(1.0f + ulp), 1.0f + ulp);                             // exact
}

// cuBLAS is opened at run time; with a CUDA toolkit (this build has one when
// STABILITY_HAS_CUDA is set) every entry point must resolve, GPU or not.
TEST(CudaBackendSetupTest, CublasOpensAtRunTime) {
#ifdef STABILITY_HAS_CUDA
  const absl::Status s = CublasStatus();
  EXPECT_TRUE(s.ok()) << s;
#else
  EXPECT_FALSE(CublasStatus().ok());
#endif
}

TEST(CudaBackendSetupTest, ExplainsWhyThereIsNoGpu) {
  absl::StatusOr<Backend*> be = InitCudaBackend(0);
  if (be.ok()) {
    EXPECT_EQ((*be)->device(), (Device{DeviceType::kCuda, 0}));
    absl::StatusOr<Backend*> missing = InitCudaBackend(1000);
    ASSERT_FALSE(missing.ok());
    EXPECT_NE(missing.status().message().find("cuda:1000 does not exist"), std::string::npos);
  } else {
    EXPECT_NE(be.status().message().find("--device=cpu"), std::string::npos) << be.status().message();
  }
}

}  // namespace
}  // namespace stability::ops::cuda
