#include "stability/data/internal/sentencepiece_wrapper.h"

#include "sentencepiece_processor.h"
#include "sentencepiece_trainer.h"

namespace stability::data::internal {

std::string SentencePieceTrain(const std::string& args) {
  const auto s = sentencepiece::SentencePieceTrainer::Train(args);
  return s.ok() ? "" : s.ToString();
}

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel() : impl_(new Impl) {}
SentencePieceModel::~SentencePieceModel() = default;

std::string SentencePieceModel::Load(const std::string& path) {
  const auto s = impl_->sp.Load(path);
  return s.ok() ? "" : s.ToString();
}

int SentencePieceModel::PieceSize() const { return impl_->sp.GetPieceSize(); }
int SentencePieceModel::EosId() const { return impl_->sp.eos_id(); }

std::string SentencePieceModel::Encode(const std::string& text, std::vector<int>* ids) const {
  const auto s = impl_->sp.Encode(text, ids);
  return s.ok() ? "" : s.ToString();
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids, std::string* text) const {
  const auto s = impl_->sp.Decode(ids, text);
  return s.ok() ? "" : s.ToString();
}

}  // namespace stability::data::internal
