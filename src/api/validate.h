// Argument checks at the API boundary: every rule lives here, each failure names the argument.
#pragma once

#include "flashmla/flashmla.h"

namespace flashmla::detail {

Status validate_metadata_args(const MetadataArgs& args);
// `check_plan`: the plan fields (metadata, num_splits, num_sm_parts, workspace) are used.
Status validate_decode_args(const DecodeArgs& args, const void* workspace, size_t workspace_bytes,
                            bool check_plan);
// Host memory only: sequence lengths and the block-table entries they use are in range.
Status validate_host_lengths(const DecodeArgs& args);
// Host memory only: the plan is exactly the one get_mla_metadata computes for the lengths.
Status validate_host_plan(const DecodeArgs& args);

}  // namespace flashmla::detail
