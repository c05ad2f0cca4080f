!> Dense layer: y = act(W x + b), W stored (out, in) so a column block is one GEMM.
module colnn_dense
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  use colnn_activations, only: activation_t
  use colnn_blas, only: gemm_nn
  implicit none
  private

  public :: dense_t

  type, extends(layer_t) :: dense_t
    real(wp), allocatable :: w(:, :)   !< (n_out, n_in)
    real(wp), allocatable :: b(:)      !< (n_out), allocated only with use_bias
    logical :: use_bias = .true.
    type(activation_t) :: act
  contains
    procedure :: init => dense_init
    procedure :: forward => dense_forward
    procedure :: describe => dense_describe
    procedure :: type_name => dense_type_name
    procedure :: has_epilogue => dense_has_epilogue
    procedure :: forward_core => dense_forward_core
    procedure :: epilogue => dense_epilogue
    procedure :: num_params => dense_num_params
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
    call gemm_nn(self%n_out, nc, self%n_in, self%w, x, y)
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
end module colnn_dense
