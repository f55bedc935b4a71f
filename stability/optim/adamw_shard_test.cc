// ZeRO-1's optimizer side without MPI: R sharded AdamW instances, each updating its piece of
// the flattened parameters, then assembled, equal one unsharded AdamW bit for bit; the
// packed moments rebuild the unsharded optimizer state; ShardOf covers every element once.
#include "stability/optim/adamw.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "stability/base/rng.h"

namespace stability::optim {
namespace {

std::vector<Parameter> MakeParams(uint64_t seed) {
  Rng rng(seed);
  std::vector<Parameter> params;
  for (auto [name, shape] : {std::pair<const char*, Shape>{"a.weight", {7, 5}}, {"b.bias", {3}}, {"c.weight", {4, 9}}}) {
    Parameter p{name, Tensor::Empty(shape), Tensor::Empty(shape), std::string(name).ends_with("weight")};
    for (int64_t i = 0; i < p.value.numel(); ++i) {
      p.value.f32()[i] = static_cast<float>(rng.Normal());
      p.grad.f32()[i] = static_cast<float>(rng.Normal());
    }
    params.push_back(p);
  }
  return params;
}

std::vector<float> Flat(const std::vector<Parameter>& params) {
  std::vector<float> out(FlatSize(params));
  PackValues(params, {0, FlatSize(params)}, out.data());
  return out;
}

TEST(AdamWShardTest, ShardedStepsEqualTheUnshardedOnesBitwise) {
  const AdamWOptions options{.weight_decay = 0.1};
  const int64_t total = FlatSize(MakeParams(5));
  for (int world : {2, 3, 200}) {  // 200 > total: some ranks own nothing
    std::vector<std::vector<Parameter>> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back(MakeParams(5));
    std::vector<AdamW> opts;
    for (int r = 0; r < world; ++r) opts.emplace_back(&ranks[r], options, ShardOf(total, r, world));
    std::vector<Parameter> fresh = MakeParams(5);
    AdamW fresh_reference(&fresh, options);
    for (int step = 0; step < 3; ++step) {
      fresh_reference.Step(1e-2, 1.0);
      std::vector<float> gathered(total);
      for (int r = 0; r < world; ++r) {
        opts[r].Step(1e-2, 1.0);
        const FlatRange s = ShardOf(total, r, world);
        PackValues(ranks[r], s, gathered.data() + s.begin);
      }
      for (int r = 0; r < world; ++r) UnpackValues(&ranks[r], {0, total}, gathered.data());  // the all-gather
      ASSERT_EQ(Flat(ranks[0]), Flat(fresh)) << "world " << world << " step " << step;
    }
    // The moments, packed per rank and put side by side, are the unsharded state.
    std::vector<float> m(total), v(total);
    int64_t bytes = 0;
    for (int r = 0; r < world; ++r) {
      const FlatRange s = ShardOf(total, r, world);
      opts[r].PackMoments(m.data() + s.begin, v.data() + s.begin);
      bytes += opts[r].state_bytes();
      EXPECT_EQ(opts[r].sharded(), world > 1);
    }
    EXPECT_EQ(bytes, fresh_reference.state_bytes());
    const auto rebuilt = opts[0].StateTensorsFromFlat(m.data(), v.data());
    const auto want = fresh_reference.StateTensors();
    ASSERT_EQ(rebuilt.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(rebuilt[i].first, want[i].first);
      ASSERT_EQ(rebuilt[i].second.shape(), want[i].second.shape());
      EXPECT_EQ(std::memcmp(rebuilt[i].second.data(), want[i].second.data(), want[i].second.nbytes()), 0)
          << want[i].first;
    }
    // And a sharded optimizer loads the full state back into its piece.
    std::vector<Parameter> again = MakeParams(5);
    AdamW loaded(&again, options, ShardOf(total, world - 1, world));
    ASSERT_TRUE(loaded.LoadState(want, 3).ok());
    std::vector<float> lm(total, 0.0f), lv(total, 0.0f);
    const FlatRange last = ShardOf(total, world - 1, world);
    loaded.PackMoments(lm.data() + last.begin, lv.data() + last.begin);
    for (int64_t i = last.begin; i < last.end; ++i) ASSERT_EQ(lm[i], m[i]);
  }
}

TEST(AdamWShardTest, ShardOfCoversEveryElementOnce) {
  for (int64_t total : {1, 7, 100, 101}) {
    for (int world : {1, 2, 3, 8, 150}) {
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const FlatRange s = ShardOf(total, r, world);
        ASSERT_EQ(s.begin, next);
        ASSERT_LE(s.size(), (total + world - 1) / world);
        next = s.end;
      }
      EXPECT_EQ(next, total);
    }
  }
}

}  // namespace
}  // namespace stability::optim
