!> A standalone activation layer (Keras Activation, ReLU, LeakyReLU, ELU, Softmax).
module colnn_activation_layer
  use colnn_kinds, only: wp
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  use colnn_activations, only: activation_t
  implicit none
  private

  public :: activation_layer_t

  type, extends(layer_t) :: activation_layer_t
    type(activation_t) :: act
  contains
    procedure :: init => activation_layer_init
    procedure :: forward => activation_layer_forward
    procedure :: describe => activation_layer_describe
    procedure :: type_name => activation_layer_type_name
    procedure :: is_elementwise => activation_layer_is_elementwise
    procedure :: apply_inplace => activation_layer_apply_inplace
    procedure :: backward => activation_layer_backward
    procedure :: ends_in_softmax => activation_layer_ends_in_softmax
    procedure :: backward_logits => activation_layer_backward_logits
  end type activation_layer_t

contains

  function activation_layer_type_name(self) result(name)
    class(activation_layer_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'activation'
  end function activation_layer_type_name

  subroutine activation_layer_init(self, spec, n_in, stat, errmsg)
    class(activation_layer_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_activation('activation', self%act, stat, errmsg); if (stat /= 0) return
    call spec%check_all_used(stat, errmsg)
  end subroutine activation_layer_init

  subroutine activation_layer_describe(self, spec)
    class(activation_layer_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_text('activation', self%act%spec())
  end subroutine activation_layer_describe

  pure logical function activation_layer_is_elementwise(self)
    class(activation_layer_t), intent(in) :: self
    activation_layer_is_elementwise = .true.
  end function activation_layer_is_elementwise

  subroutine activation_layer_apply_inplace(self, nc, a)
    class(activation_layer_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
    call self%act%apply(self%n_out, nc, a)
  end subroutine activation_layer_apply_inplace

  subroutine activation_layer_forward(self, nc, x, y)
    class(activation_layer_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
    call self%act%apply(self%n_out, nc, y)
  end subroutine activation_layer_forward

  subroutine activation_layer_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(activation_layer_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    call self%act%backward(self%n_out, nc, x, y, dy, dx)
  end subroutine activation_layer_backward

  pure logical function activation_layer_ends_in_softmax(self)
    class(activation_layer_t), intent(in) :: self
    activation_layer_ends_in_softmax = self%act%name == 'softmax'
  end function activation_layer_ends_in_softmax

  !> The layer is the softmax: dL/dx is the given gradient at its input.
  subroutine activation_layer_backward_logits(self, nc, x, y, dlogits, dx, stat, errmsg)
    class(activation_layer_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dlogits(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    dx = dlogits
  end subroutine activation_layer_backward_logits
end module colnn_activation_layer
