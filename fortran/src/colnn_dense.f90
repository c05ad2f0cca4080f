!> Dense layer: y = act(W x + b), W stored (out, in) so a column block is one GEMM.
module colnn_dense
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  use colnn_activations, only: activation_t
  use colnn_blas, only: gemm_nn, gemm_nt, gemm_tn, gemm_nn_invariant
  implicit none
  private

  public :: dense_t

  type, extends(layer_t) :: dense_t
    real(wp), allocatable :: w(:, :)   !< (n_out, n_in)
    real(wp), allocatable :: b(:)      !< (n_out), allocated only with use_bias
    logical :: use_bias = .true.
    type(activation_t) :: act
    real(wp), allocatable :: z(:, :)    !< pre-activation of the last forward_train
    real(wp), allocatable :: dw(:, :), db(:)
  contains
    procedure :: init => dense_init
    procedure :: forward => dense_forward
    procedure :: describe => dense_describe
    procedure :: type_name => dense_type_name
    procedure :: has_epilogue => dense_has_epilogue
    procedure :: forward_core => dense_forward_core
    procedure :: epilogue => dense_epilogue
    procedure :: num_params => dense_num_params
    procedure :: forward_train => dense_forward_train
    procedure :: backward => dense_backward
    procedure :: ends_in_softmax => dense_ends_in_softmax
    procedure :: backward_logits => dense_backward_logits
    procedure :: num_trainable => dense_num_trainable
    procedure :: get_params => dense_get_params
    procedure :: set_params => dense_set_params
    procedure :: get_grads => dense_get_grads
  end type dense_t

contains

  function dense_type_name(self) result(name)
    class(dense_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'dense'
  end function dense_type_name

  subroutine dense_init(self, spec, n_in, stat, errmsg)
    class(dense_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: units
    self%n_in = n_in
    call spec%get_int('units', units, stat, errmsg, min_value=1); if (stat /= 0) return
    self%n_out = units
    call spec%get_logical('use_bias', self%use_bias, stat, errmsg); if (stat /= 0) return
    call spec%get_activation('activation', self%act, stat, errmsg); if (stat /= 0) return
    call spec%get_matrix_t('kernel', n_in, units, self%w, stat, errmsg); if (stat /= 0) return
    if (self%use_bias) then
      call spec%get_vector('bias', units, self%b, stat, errmsg); if (stat /= 0) return
    end if
    call spec%check_all_used(stat, errmsg)
  end subroutine dense_init

  subroutine dense_describe(self, spec)
    class(dense_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_int('units', self%n_out)
    call spec%set_logical('use_bias', self%use_bias)
    call spec%set_text('activation', self%act%spec())
    call spec%set_tensor_2d('kernel', self%w)
    if (self%use_bias) call spec%set_tensor_1d('bias', self%b)
  end subroutine dense_describe

  pure logical function dense_has_epilogue(self)
    class(dense_t), intent(in) :: self
    dense_has_epilogue = self%use_bias .or. .not. self%act%is_linear()
  end function dense_has_epilogue

  subroutine dense_forward_core(self, nc, x, y)
    class(dense_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    if (self%batch_invariant) then
      call gemm_nn_invariant(self%n_out, nc, self%n_in, self%w, x, y)
    else
      call gemm_nn(self%n_out, nc, self%n_in, self%w, x, y)
    end if
  end subroutine dense_forward_core

  subroutine dense_epilogue(self, nc, a)
    class(dense_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
    integer :: j
    if (self%use_bias) then
      do j = 1, nc
        a(:, j) = a(:, j) + self%b
      end do
    end if
    call self%act%apply(self%n_out, nc, a)
  end subroutine dense_epilogue

  subroutine dense_forward(self, nc, x, y)
    class(dense_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    call self%forward_core(nc, x, y)
    call self%epilogue(nc, y)
  end subroutine dense_forward

  pure integer(i8) function dense_num_params(self)
    class(dense_t), intent(in) :: self
    dense_num_params = int(self%n_in, i8) * self%n_out
    if (self%use_bias) dense_num_params = dense_num_params + self%n_out
  end function dense_num_params

  subroutine dense_forward_train(self, nc, x, y)
    class(dense_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    integer :: j
    if (allocated(self%z)) then
      if (size(self%z, 2) /= nc) deallocate (self%z)
    end if
    if (.not. allocated(self%z)) allocate (self%z(self%n_out, nc))
    call gemm_nn(self%n_out, nc, self%n_in, self%w, x, self%z)
    if (self%use_bias) then
      do j = 1, nc
        self%z(:, j) = self%z(:, j) + self%b
      end do
    end if
    y = self%z
    call self%act%apply(self%n_out, nc, y)
  end subroutine dense_forward_train

  subroutine dense_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(dense_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    real(wp), allocatable :: dz(:, :)
    call check_forward_train_done(self, stat, errmsg)
    if (stat /= 0) return
    allocate (dz(self%n_out, nc))
    call self%act%backward(self%n_out, nc, self%z, y, dy, dz)
    call backward_from_preactivation(self, nc, x, dz, dx)
  end subroutine dense_backward

  pure logical function dense_ends_in_softmax(self)
    class(dense_t), intent(in) :: self
    dense_ends_in_softmax = self%act%name == 'softmax'
  end function dense_ends_in_softmax

  !> The logits are the pre-activation z: its gradient is given, so the activation is stepped over.
  subroutine dense_backward_logits(self, nc, x, y, dlogits, dx, stat, errmsg)
    class(dense_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dlogits(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    call check_forward_train_done(self, stat, errmsg)
    if (stat /= 0) return
    call backward_from_preactivation(self, nc, x, dlogits, dx)
  end subroutine dense_backward_logits

  subroutine check_forward_train_done(self, stat, errmsg)
    type(dense_t), intent(in) :: self
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    if (.not. allocated(self%z)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'dense backward: no forward_train before'
    end if
  end subroutine check_forward_train_done

  !> dw, db and dx = W^T dz from dz = dL/dz, the gradient at the pre-activation.
  subroutine backward_from_preactivation(self, nc, x, dz, dx)
    type(dense_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)      !! input of the last forward_train
    real(wp), intent(in) :: dz(self%n_out, nc)    !! dL/dz
    real(wp), intent(out) :: dx(self%n_in, nc)    !! dL/dx
    if (.not. allocated(self%dw)) allocate (self%dw(self%n_out, self%n_in))
    call gemm_nt(self%n_out, self%n_in, nc, dz, x, self%dw, .false.)
    if (self%use_bias) self%db = sum(dz, dim=2)
    call gemm_tn(self%n_in, nc, self%n_out, self%w, dz, dx)
  end subroutine backward_from_preactivation

  pure integer function dense_num_trainable(self)
    class(dense_t), intent(in) :: self
    dense_num_trainable = self%n_in * self%n_out
    if (self%use_bias) dense_num_trainable = dense_num_trainable + self%n_out
  end function dense_num_trainable

  !> w(out, in) in column order is the Keras kernel (in, out) in row order.
  subroutine dense_get_params(self, p)
    class(dense_t), intent(in) :: self
    real(wp), intent(out) :: p(:)
    integer :: nw
    nw = self%n_in * self%n_out
    p(1:nw) = reshape(self%w, [nw])
    if (self%use_bias) p(nw + 1:nw + self%n_out) = self%b
  end subroutine dense_get_params

  subroutine dense_set_params(self, p)
    class(dense_t), intent(inout) :: self
    real(wp), intent(in) :: p(:)
    integer :: nw
    nw = self%n_in * self%n_out
    self%w = reshape(p(1:nw), [self%n_out, self%n_in])
    if (self%use_bias) self%b = p(nw + 1:nw + self%n_out)
  end subroutine dense_set_params

  subroutine dense_get_grads(self, g)
    class(dense_t), intent(in) :: self
    real(wp), intent(out) :: g(:)
    integer :: nw
    nw = self%n_in * self%n_out
    g = 0
    if (allocated(self%dw)) g(1:nw) = reshape(self%dw, [nw])
    if (self%use_bias .and. allocated(self%db)) g(nw + 1:nw + self%n_out) = self%db
  end subroutine dense_get_grads
end module colnn_dense
