// `reduce/subgroup`: the GPU reductions of common/reduce_workgroup.wgsl, lanes combined
// by subgroup shuffles, then a short tree in workgroup memory across subgroups.
override SG_MIN: u32 = 8u;
//#include common/seg_reduce_subgroup.wgsl
//#include common/reduce_workgroup.wgsl
