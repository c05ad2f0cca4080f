!> C = A B for the working precision: BLAS ?gemm when the library is built with BLAS
!> (COLNN_USE_BLAS), the matmul intrinsic otherwise; and the batch-invariant product
!> (`gemm_nn_invariant`, colnn_gemm_invariant.c) whose columns do not depend on the call's shape.
module colnn_blas
  use, intrinsic :: iso_c_binding, only: c_int, c_ptr, c_f_pointer, c_char, c_associated
  use colnn_kinds, only: wp, sp, dp
  implicit none
  private

  public :: gemm_nn, gemm_nt, gemm_tn, blas_name, gemm_nn_invariant, invariant_kernel_name

  interface
    subroutine c_gemm_invariant_s(m, n, k, a, b, c) bind(C, name='colnn_gemm_invariant_s')
      import :: c_int, sp
      integer(c_int), value :: m, n, k
      real(sp), intent(in) :: a(*), b(*)
      real(sp), intent(inout) :: c(*)
    end subroutine c_gemm_invariant_s
    subroutine c_gemm_invariant_d(m, n, k, a, b, c) bind(C, name='colnn_gemm_invariant_d')
      import :: c_int, dp
      integer(c_int), value :: m, n, k
      real(dp), intent(in) :: a(*), b(*)
      real(dp), intent(inout) :: c(*)
    end subroutine c_gemm_invariant_d
    type(c_ptr) function c_gemm_invariant_isa() bind(C, name='colnn_gemm_invariant_isa')
      import :: c_ptr
    end function c_gemm_invariant_isa
  end interface

#ifdef COLNN_USE_BLAS
  interface
    subroutine sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
      import :: sp
      character, intent(in) :: transa, transb
      integer, intent(in) :: m, n, k, lda, ldb, ldc
      real(sp), intent(in) :: alpha, beta
      real(sp), intent(in) :: a(lda, *), b(ldb, *)
      real(sp), intent(inout) :: c(ldc, *)
    end subroutine sgemm
    subroutine dgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
      import :: dp
      character, intent(in) :: transa, transb
      integer, intent(in) :: m, n, k, lda, ldb, ldc
      real(dp), intent(in) :: alpha, beta
      real(dp), intent(in) :: a(lda, *), b(ldb, *)
      real(dp), intent(inout) :: c(ldc, *)
    end subroutine dgemm
  end interface
  character(len=*), parameter :: blas_name = 'blas'
#else
  character(len=*), parameter :: blas_name = 'matmul'
#endif

contains

  !> c(m, n) = a(m, k) b(k, n)
  subroutine gemm_nn(m, n, k, a, b, c)
    integer, intent(in) :: m, n, k
    real(wp), intent(in) :: a(m, k), b(k, n)
    real(wp), intent(out) :: c(m, n)
#ifdef COLNN_USE_BLAS
#ifdef COLNN_DOUBLE
    call dgemm('N', 'N', m, n, k, 1.0_wp, a, m, b, k, 0.0_wp, c, m)
#else
    call sgemm('N', 'N', m, n, k, 1.0_wp, a, m, b, k, 0.0_wp, c, m)
#endif
#else
    c = matmul(a, b)
#endif
  end subroutine gemm_nn

  !> c(m, n) = a(m, k) b(k, n), each element an fma chain over k in order from zero: a column's
  !> result is the same bits whatever n, the column's position, or the machine's vector width.
  subroutine gemm_nn_invariant(m, n, k, a, b, c)
    integer, intent(in) :: m, n, k
    real(wp), intent(in) :: a(m, k), b(k, n)
    real(wp), intent(out) :: c(m, n)
#ifdef COLNN_DOUBLE
    call c_gemm_invariant_d(int(m, c_int), int(n, c_int), int(k, c_int), a, b, c)
#else
    call c_gemm_invariant_s(int(m, c_int), int(n, c_int), int(k, c_int), a, b, c)
#endif
  end subroutine gemm_nn_invariant

  !> The instruction set the batch-invariant kernel uses here ('avx512', 'avx2' or 'generic').
  function invariant_kernel_name() result(name)
    character(len=:), allocatable :: name
    character(kind=c_char), pointer :: chars(:)
    type(c_ptr) :: p
    integer :: n
    p = c_gemm_invariant_isa()
    name = ''
    if (.not. c_associated(p)) return
    call c_f_pointer(p, chars, [16])
    do n = 1, 16
      if (chars(n) == achar(0)) exit
      name = name//chars(n)
    end do
  end function invariant_kernel_name

  !> c(m, n) = a(m, k) b(n, k)^T  (+ c when accumulate)
  subroutine gemm_nt(m, n, k, a, b, c, accumulate)
    integer, intent(in) :: m, n, k
    real(wp), intent(in) :: a(m, k), b(n, k)
    real(wp), intent(inout) :: c(m, n)
    logical, intent(in) :: accumulate
    real(wp) :: beta
    beta = merge(1.0_wp, 0.0_wp, accumulate)
#ifdef COLNN_USE_BLAS
#ifdef COLNN_DOUBLE
    call dgemm('N', 'T', m, n, k, 1.0_wp, a, m, b, n, beta, c, m)
#else
    call sgemm('N', 'T', m, n, k, 1.0_wp, a, m, b, n, beta, c, m)
#endif
#else
    if (accumulate) then
      c = c + matmul(a, transpose(b))
    else
      c = matmul(a, transpose(b))
    end if
#endif
  end subroutine gemm_nt

  !> c(m, n) = a(k, m)^T b(k, n)
  subroutine gemm_tn(m, n, k, a, b, c)
    integer, intent(in) :: m, n, k
    real(wp), intent(in) :: a(k, m), b(k, n)
    real(wp), intent(out) :: c(m, n)
#ifdef COLNN_USE_BLAS
#ifdef COLNN_DOUBLE
    call dgemm('T', 'N', m, n, k, 1.0_wp, a, k, b, k, 0.0_wp, c, m)
#else
    call sgemm('T', 'N', m, n, k, 1.0_wp, a, k, b, k, 0.0_wp, c, m)
#endif
#else
    c = matmul(transpose(a), b)
#endif
  end subroutine gemm_tn
end module colnn_blas
