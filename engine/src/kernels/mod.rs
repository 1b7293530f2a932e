//! Hot loops: dot products between quantised weight rows and activations, with a scalar
//! reference ([`scalar`]) and SIMD variants selected once at run time.
