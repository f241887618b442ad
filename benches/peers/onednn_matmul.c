/* oneDNN's matmul through its C API at samp's model shapes, for the library evaluation of
 * issue #12 (BENCHMARKS.md). Built and run by benches/peers/onednn_matmul.sh, which fetches
 * oneDNN from PyPI (onednn-cpu-gomp: oneDNN 3.2 with GNU OpenMP).
 *
 * Per shape (m = rows, n x k weights) and precision: f32 x f32, bf16 x bf16 -> f32, and
 * s8 x s8 -> f32 with a per-tensor source scale and per-column weight scales (the dequantizing
 * epilogue samp's INT8 GEMM has; quantizing the f32 input is NOT included here, while samp's
 * INT8 rate includes it). Weights in the layout oneDNN picks ("any"), reordered once, as samp
 * packs once. Prints one JSON line per (shape, precision): the best rate (Gop/s, 2 x m*n*k per
 * second) of repeated calls over the given seconds. Threads: OMP_NUM_THREADS. Rows: argv[1]
 * (fixed in the primitive, or with ONEDNN_RUNTIME_ROWS=1 left to run time). */
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(x)                                                              \
    do {                                                                      \
        dnnl_status_t s_ = (x);                                               \
        if (s_ != dnnl_success) {                                             \
            fprintf(stderr, "%s:%d: %s failed: %d\n", __FILE__, __LINE__, #x, \
                    (int)s_);                                                 \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Values in [-1, 1] (small integers for s8): never denormal, never zero throughout. */
static void fill(dnnl_memory_t m) {
    void *p = NULL;
    const_dnnl_memory_desc_t md;
    dnnl_data_type_t dt;
    CHECK(dnnl_memory_get_memory_desc(m, &md));
    CHECK(dnnl_memory_desc_query(md, dnnl_query_data_type, &dt));
    size_t bytes = dnnl_memory_desc_get_size(md);
    CHECK(dnnl_memory_get_data_handle(m, &p));
    for (size_t i = 0; i < bytes / (dt == dnnl_f32 ? 4 : dt == dnnl_bf16 ? 2 : 1); i++) {
        float v = (float)((i * 7919u) % 255u) / 127.0f - 1.0f;
        if (dt == dnnl_f32) {
            ((float *)p)[i] = v;
        } else if (dt == dnnl_bf16) {
            unsigned int u;
            memcpy(&u, &v, 4);
            ((unsigned short *)p)[i] = (unsigned short)(u >> 16);
        } else {
            ((signed char *)p)[i] = (signed char)(v * 100.0f);
        }
    }
}

static dnnl_memory_t mem(dnnl_engine_t eng, int nd, dnnl_dims_t d, dnnl_data_type_t dt,
                         dnnl_format_tag_t tag) {
    dnnl_memory_desc_t md;
    dnnl_memory_t m;
    CHECK(dnnl_memory_desc_create_with_tag(&md, nd, d, dt, tag));
    CHECK(dnnl_memory_create(&m, md, eng, DNNL_MEMORY_ALLOCATE));
    fill(m);
    return m;
}

static void run(dnnl_engine_t eng, dnnl_stream_t st, const char *shape, long M, long N, long K,
                const char *prec, dnnl_data_type_t dt, double seconds) {
    /* ONEDNN_RUNTIME_ROWS=1: the primitive is made with the rows left to run time, as samp
     * makes it (oneDNN then picks other implementations, e.g. gemm:jit for f32). */
    int rt = getenv("ONEDNN_RUNTIME_ROWS") != NULL;
    dnnl_dims_t sd = {M, K}, wd = {K, N}, dd = {M, N};
    dnnl_dims_t spd = {rt ? DNNL_RUNTIME_DIM_VAL : M, K}, dpd = {rt ? DNNL_RUNTIME_DIM_VAL : M, N};
    dnnl_memory_desc_t src_md, wei_any, dst_md, src_pd, dst_pd;
    CHECK(dnnl_memory_desc_create_with_tag(&src_md, 2, sd, dt, dnnl_ab));
    CHECK(dnnl_memory_desc_create_with_tag(&src_pd, 2, spd, dt, dnnl_ab));
    CHECK(dnnl_memory_desc_create_with_tag(&wei_any, 2, wd, dt, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_create_with_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab));
    CHECK(dnnl_memory_desc_create_with_tag(&dst_pd, 2, dpd, dnnl_f32, dnnl_ab));
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr));
    int int8 = dt == dnnl_s8;
    if (int8) {
        CHECK(dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_SRC, 0));
        CHECK(dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_WEIGHTS, 1 << 1));
    }
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_matmul_primitive_desc_create(&pd, eng, src_pd, wei_any, NULL, dst_pd, attr));
    const char *impl = NULL;
    CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    const_dnnl_memory_desc_t wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_t prim;
    CHECK(dnnl_primitive_create(&prim, pd));
    dnnl_memory_t src, wei, dst, ssc = NULL, wsc = NULL;
    CHECK(dnnl_memory_create(&src, src_md, eng, DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_create(&wei, wmd, eng, DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_create(&dst, dst_md, eng, DNNL_MEMORY_ALLOCATE));
    fill(src);
    fill(wei);
    dnnl_exec_arg_t args[5] = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
    int nargs = 3;
    if (int8) {
        dnnl_dims_t one = {1}, cols = {N};
        ssc = mem(eng, 1, one, dnnl_f32, dnnl_a);
        wsc = mem(eng, 1, cols, dnnl_f32, dnnl_a);
        args[3] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, ssc};
        args[4] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, wsc};
        nargs = 5;
    }
    double best = 1e30, start = now();
    int calls = 0;
    while (calls < 3 || now() - start < seconds) {
        double t0 = now();
        CHECK(dnnl_primitive_execute(prim, st, nargs, args));
        CHECK(dnnl_stream_wait(st));
        double t = now() - t0;
        if (t < best) best = t;
        calls++;
    }
    printf("{\"shape\":\"%s\",\"m\":%ld,\"n\":%ld,\"k\":%ld,\"precision\":\"%s\",\"gops\":%.1f,"
           "\"calls\":%d,\"impl\":\"%s\"}\n",
           shape, M, N, K, prec, 2.0 * M * N * K / best / 1e9, calls, impl);
    fflush(stdout);
    dnnl_primitive_destroy(prim);
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_destroy(src);
    dnnl_memory_destroy(wei);
    dnnl_memory_destroy(dst);
    dnnl_memory_desc_destroy(src_md);
    dnnl_memory_desc_destroy(src_pd);
    dnnl_memory_desc_destroy(wei_any);
    dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(dst_pd);
    if (ssc) dnnl_memory_destroy(ssc);
    if (wsc) dnnl_memory_destroy(wsc);
}

int main(int argc, char **argv) {
    long rows = argc > 1 ? atol(argv[1]) : 1024;
    double seconds = argc > 2 ? atof(argv[2]) : 0.5;
    const struct { const char *name; long k, n; } shapes[] = {
        {"minilm.qkv", 384, 1152},       {"minilm.attn_out", 384, 384},
        {"minilm.ffn_up", 384, 1536},    {"minilm.ffn_down", 1536, 384},
        {"bert-base.qkv", 768, 2304},    {"bert-base.attn_out", 768, 768},
        {"bert-base.ffn_up", 768, 3072}, {"bert-base.ffn_down", 3072, 768},
    };
    dnnl_engine_t eng;
    dnnl_stream_t st;
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        run(eng, st, shapes[i].name, rows, shapes[i].n, shapes[i].k, "float32", dnnl_f32, seconds);
        run(eng, st, shapes[i].name, rows, shapes[i].n, shapes[i].k, "bfloat16", dnnl_bf16, seconds);
        run(eng, st, shapes[i].name, rows, shapes[i].n, shapes[i].k, "int8", dnnl_s8, seconds);
    }
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return 0;
}
