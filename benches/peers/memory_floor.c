// Memory floor of a GEMM layer y[m,n] = f(x[m,k]) at the model shapes (m = 1024): read x once
// (a row abs-max, as a dynamic quantizer must), write y once, nothing else; 2 threads, half the
// rows each, buffers reused per call (as `samp kernels` does). Prints the best time over 0.5 s
// and the rate 2mkn / t a layer would have if it cost only that traffic (BENCHMARKS.md).
//
//     gcc -O3 -mavx512f -pthread benches/peers/memory_floor.c -o /tmp/memory_floor && /tmp/memory_floor
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { float *x, *y; int rows, k, n; } job;
static pthread_barrier_t bar; static volatile int stop; static job jobs[2];
static void pass(job *j){
  for(int r=0;r<j->rows;r++){ const float *xr=j->x+(size_t)r*j->k; __m512 mx=_mm512_setzero_ps();
    for(int i=0;i<j->k;i+=16) mx=_mm512_max_ps(mx,_mm512_abs_ps(_mm512_loadu_ps(xr+i)));
    __m512 v=_mm512_set1_ps(_mm512_reduce_max_ps(mx)); float *yr=j->y+(size_t)r*j->n;
    for(int i=0;i<j->n;i+=16) _mm512_storeu_ps(yr+i,v); } }
static void *helper(void *p){ (void)p; for(;;){ pthread_barrier_wait(&bar); if(stop) return 0; pass(&jobs[1]); pthread_barrier_wait(&bar);} }
int main(){ int shapes[8][2]={{384,1152},{384,384},{384,1536},{1536,384},{768,2304},{768,768},{768,3072},{3072,768}};
  const char *names[8]={"minilm.qkv","minilm.attn_out","minilm.ffn_up","minilm.ffn_down","bert-base.qkv","bert-base.attn_out","bert-base.ffn_up","bert-base.ffn_down"};
  int m=1024;
  for(int s=0;s<8;s++){ int k=shapes[s][0], n=shapes[s][1];
    float *x=aligned_alloc(64,(size_t)m*k*4), *y=aligned_alloc(64,(size_t)m*n*4);
    for(size_t i=0;i<(size_t)m*k;i++) x[i]=(float)(i%1000)/1000.f-0.5f;
    for(size_t i=0;i<(size_t)m*n;i++) y[i]=0;
    jobs[0]=(job){x,y,m/2,k,n}; jobs[1]=(job){x+(size_t)m/2*k,y+(size_t)m/2*n,m/2,k,n};
    pthread_barrier_init(&bar,0,2); stop=0; pthread_t th; pthread_create(&th,0,helper,0);
    double best=1e9, st=now();
    while(now()-st<0.5){ double t=now(); pthread_barrier_wait(&bar); pass(&jobs[0]); pthread_barrier_wait(&bar);
      t=now()-t; if(t<best) best=t; }
    stop=1; pthread_barrier_wait(&bar); pthread_join(th,0); pthread_barrier_destroy(&bar);
    printf("%s %d %d floor_us %.1f eq_gops %.0f\n",names[s],k,n,best*1e6,2.0*m*k*n/best/1e9);
    free(x); free(y); }
}
