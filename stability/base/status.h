// Status plumbing shared by every layer: absl::Status / absl::StatusOr across layer
// boundaries (DESIGN.md §3), plus the two macros absl keeps private.
//
//   STABILITY_RETURN_IF_ERROR(WriteFile(path));
//   STABILITY_ASSIGN_OR_RETURN(Shard shard, ReadShard(path));
#ifndef STABILITY_BASE_STATUS_H_
#define STABILITY_BASE_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define STABILITY_STATUS_CONCAT_INNER_(a, b) a##b
#define STABILITY_STATUS_CONCAT_(a, b) STABILITY_STATUS_CONCAT_INNER_(a, b)

#define STABILITY_RETURN_IF_ERROR(expr)                   \
  do {                                                    \
    ::absl::Status stability_status_ = (expr);            \
    if (!stability_status_.ok()) return stability_status_; \
  } while (0)

#define STABILITY_ASSIGN_OR_RETURN(lhs, expr) \
  STABILITY_ASSIGN_OR_RETURN_IMPL_(STABILITY_STATUS_CONCAT_(statusor_, __LINE__), lhs, expr)

#define STABILITY_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                     \
  if (!statusor.ok()) return statusor.status();               \
  lhs = std::move(statusor).value()

#endif  // STABILITY_BASE_STATUS_H_
