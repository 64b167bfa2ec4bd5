// Host version of the split plan (split_plan.h): a sequential walk over the requests.
#include <cstdlib>
#include <vector>

#include "api/backends.h"
#include "scheduler/split_plan.h"

namespace flashmla {

int64_t min_part_payload() {
  static const int64_t floor = [] {
    const char* env = std::getenv("FLASHMLA_SCHED_MIN_PAYLOAD");
    const long n = env != nullptr ? std::atol(env) : 0;
    return n >= 1 ? int64_t(n) : int64_t(kMinPartPayload);
  }();
  return floor;
}

}  // namespace flashmla

namespace flashmla::detail {

void metadata_host(const MetadataArgs& args) {
  const int batch = args.batch, parts = args.num_sm_parts;
  const int32_t* seqlens = args.cache_seqlens;

  int64_t total = 0;
  for (int i = 0; i < batch; ++i) total += request_cost(seqlens[i]);
  const int64_t payload = part_payload(total, parts, min_part_payload());

  // Cut p = (request, block, split index of the piece it starts); cuts past the end are (batch, 0).
  std::vector<int32_t> cut_req(parts + 1, batch), cut_blk(parts + 1, 0), cut_split(parts + 1, 0);
  int64_t c = 0;
  args.num_splits[0] = 0;
  for (int i = 0; i < batch; ++i) {
    const int64_t cost = request_cost(seqlens[i]);
    int rank = 0;
    for (int64_t p = first_cut_at_or_after(c, payload); p <= parts && p * payload < c + cost; ++p) {
      const int block = cut_block(p * payload, c);
      cut_req[p] = i;
      cut_blk[p] = block;
      cut_split[p] = block > 0 ? ++rank : 0;
    }
    args.num_splits[i + 1] = args.num_splits[i] + 1 + rank;
    c += cost;
  }

  for (int p = 0; p < parts; ++p) {
    const int end_req = cut_req[p + 1];
    const int prev_blocks = end_req > 0 ? sched_blocks(seqlens[end_req - 1]) : 0;
    make_part(cut_req[p], cut_blk[p], cut_split[p], end_req, cut_blk[p + 1], prev_blocks,
              args.tile_scheduler_metadata + p * kMetadataInts);
  }
}

}  // namespace flashmla::detail
