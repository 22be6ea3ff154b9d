// `reduce/tree`: the GPU reductions of common/reduce_workgroup.wgsl, lanes combined by a
// tree in workgroup memory; runs on any adapter (no subgroup operations).
//#include common/seg_reduce_tree.wgsl
//#include common/reduce_workgroup.wgsl
