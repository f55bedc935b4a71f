// The project version, as a string. Defined once in stability/base/version.bzl.
#ifndef STABILITY_BASE_VERSION_H_
#define STABILITY_BASE_VERSION_H_

namespace stability {

inline constexpr const char* kVersion = STABILITY_VERSION;

}  // namespace stability

#endif  // STABILITY_BASE_VERSION_H_
