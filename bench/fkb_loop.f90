!> An FKB-style (Fortran-Keras Bridge) forward pass, written for the benchmark only.
!>
!> FKB evaluates a network one column at a time: each dense layer computes
!> `z = matmul(transpose(w), a) + b` with `w` stored (inputs, outputs), and every layer keeps its
!> own output vector. A host model calls that once per column. `fkb_forward` does exactly this
!> over all columns of a (features, columns) block, so the benchmark can time it against the
!> batched library. bench/forward.py compiles this file with gfortran -O3 -march=native.
module fkb_loop
  use, intrinsic :: iso_c_binding, only: c_int, c_float
  implicit none
  private

  integer, parameter :: KIND_DENSE = 1, KIND_BATCHNORM = 2, KIND_LEAKY_RELU = 3, &
                        KIND_IDENTITY = 4
  integer, parameter :: MAX_LAYERS = 256

  type :: layer_t
    integer :: kind = 0
    integer :: n_in = 0, n_out = 0
    real(c_float), allocatable :: w(:, :)     !< (n_in, n_out), as FKB stores it
    real(c_float), allocatable :: b(:)
    real(c_float), allocatable :: gamma(:), beta(:), mean(:), var(:)
    real(c_float) :: eps = 0.001, alpha = 0.3
    real(c_float), allocatable :: a(:)        !< this layer's output for the current column
  end type layer_t

  type(layer_t), save, target :: net(MAX_LAYERS)
  integer, save :: n_layers = 0

  public :: fkb_reset, fkb_add_dense, fkb_add_batchnorm, fkb_add_leaky_relu, fkb_add_identity, &
            fkb_forward

contains

  subroutine fkb_reset() bind(C, name='fkb_reset')
    integer :: l
    do l = 1, n_layers
      net(l) = layer_t()
    end do
    n_layers = 0
  end subroutine fkb_reset

  !> Returns the new layer's index, or -1 when the table is full.
  integer(c_int) function next_layer(kind, n_in, n_out) result(l)
    integer, intent(in) :: kind, n_in, n_out
    if (n_layers >= MAX_LAYERS) then
      l = -1
      return
    end if
    n_layers = n_layers + 1
    l = n_layers
    net(l)%kind = kind
    net(l)%n_in = n_in
    net(l)%n_out = n_out
    allocate (net(l)%a(n_out))
    net(l)%a = 0
  end function next_layer

  !> w: the Keras kernel (n_in, n_out) in Fortran order, i.e. kernel.T contiguous in C.
  integer(c_int) function fkb_add_dense(n_in, n_out, w, b) bind(C, name='fkb_add_dense') result(l)
    integer(c_int), value, intent(in) :: n_in, n_out
    real(c_float), intent(in) :: w(n_in, n_out), b(n_out)
    l = next_layer(KIND_DENSE, n_in, n_out)
    if (l < 0) return
    net(l)%w = w
    net(l)%b = b
  end function fkb_add_dense

  integer(c_int) function fkb_add_batchnorm(n, gamma, beta, mean, var, eps) &
      bind(C, name='fkb_add_batchnorm') result(l)
    integer(c_int), value, intent(in) :: n
    real(c_float), intent(in) :: gamma(n), beta(n), mean(n), var(n)
    real(c_float), value, intent(in) :: eps
    l = next_layer(KIND_BATCHNORM, n, n)
    if (l < 0) return
    net(l)%gamma = gamma
    net(l)%beta = beta
    net(l)%mean = mean
    net(l)%var = var
    net(l)%eps = eps
  end function fkb_add_batchnorm

  integer(c_int) function fkb_add_leaky_relu(n, alpha) bind(C, name='fkb_add_leaky_relu') result(l)
    integer(c_int), value, intent(in) :: n
    real(c_float), value, intent(in) :: alpha
    l = next_layer(KIND_LEAKY_RELU, n, n)
    if (l < 0) return
    net(l)%alpha = alpha
  end function fkb_add_leaky_relu

  !> Dropout at inference.
  integer(c_int) function fkb_add_identity(n) bind(C, name='fkb_add_identity') result(l)
    integer(c_int), value, intent(in) :: n
    l = next_layer(KIND_IDENTITY, n, n)
  end function fkb_add_identity

  subroutine layer_forward(layer, x)
    type(layer_t), intent(inout) :: layer
    real(c_float), intent(in) :: x(:)
    select case (layer%kind)
    case (KIND_DENSE)
      layer%a = matmul(transpose(layer%w), x) + layer%b
    case (KIND_BATCHNORM)
      layer%a = (x - layer%mean) / sqrt(layer%var + layer%eps) * layer%gamma + layer%beta
    case (KIND_LEAKY_RELU)
      layer%a = max(layer%alpha * x, x)
    case default
      layer%a = x
    end select
  end subroutine layer_forward

  !> y(n_out, nc) = network(x(n_in, nc)), one column at a time. Returns 0, or 3 when the sizes
  !> do not match the layers that were added.
  integer(c_int) function fkb_forward(nc, n_in, n_out, x, y) bind(C, name='fkb_forward') &
      result(stat)
    integer(c_int), value, intent(in) :: nc, n_in, n_out
    real(c_float), intent(in) :: x(n_in, nc)
    real(c_float), intent(out) :: y(n_out, nc)
    integer :: j, l
    stat = 3
    if (n_layers < 1) return
    if (net(1)%n_in /= n_in .or. net(n_layers)%n_out /= n_out) return
    do j = 1, nc
      call layer_forward(net(1), x(:, j))
      do l = 2, n_layers
        call layer_forward(net(l), net(l - 1)%a)
      end do
      y(:, j) = net(n_layers)%a
    end do
    stat = 0
  end function fkb_forward
end module fkb_loop
