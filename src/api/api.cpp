// Public API: validate at the boundary, then hand over to the backend.
#include "flashmla/flashmla.h"

#include <algorithm>

#include "api/backends.h"
#include "api/validate.h"
#include "common/params.h"

namespace flashmla {

int num_sm_parts(int num_sms, int q_rows_per_kv_head, int h_kv) {
  if (num_sms < 1 || q_rows_per_kv_head < 1 || h_kv < 1) return 0;
  const int m_blocks = (q_rows_per_kv_head + kBlockM - 1) / kBlockM;
  return std::max(1, num_sms / h_kv / m_blocks);
}

Status get_mla_metadata(const MetadataArgs& args, cudaStream_t stream) {
  if (Status s = detail::validate_metadata_args(args); !s.ok()) return s;
  if (args.backend == Backend::kHost) {
    detail::metadata_host(args);
    return Status::Ok();
  }
  return detail::metadata_cuda(args, stream);
}

size_t decode_workspace_size(int batch, int s_q, int h_q, int h_kv, int num_sm_parts) {
  if (batch < 1 || s_q < 1 || h_q < 1 || h_kv < 1 || h_q % h_kv != 0 || num_sm_parts < 1) return 0;
  return WorkspaceLayout(batch, s_q, h_q, h_kv, num_sm_parts).total_bytes;
}

Status mla_decode(const DecodeArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (Status s = detail::validate_decode_args(args, workspace, workspace_bytes, /*check_plan=*/true); !s.ok())
    return s;
  if (args.batch == 0) return Status::Ok();  // an empty grid is not a valid launch
  if (args.backend == Backend::kHost) {
    if (Status s = detail::validate_host_lengths(args); !s.ok()) return s;
    if (Status s = detail::validate_host_plan(args); !s.ok()) return s;
    detail::decode_host(args, workspace);
    return Status::Ok();
  }
  return detail::decode_cuda(args, workspace, stream);
}

Status reference_decode(const DecodeArgs& args) {
  if (Status s = detail::validate_decode_args(args, nullptr, 0, /*check_plan=*/false); !s.ok()) return s;
  if (args.backend != Backend::kHost)
    return Status::Error("backend: expected Backend::kHost (the reference runs on host memory), got kCuda");
  if (Status s = detail::validate_host_lengths(args); !s.ok()) return s;
  if (args.batch > 0) detail::reference_host(args);
  return Status::Ok();
}

}  // namespace flashmla
