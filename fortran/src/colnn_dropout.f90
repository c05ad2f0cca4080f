!> Dropout: the identity at inference (Keras scales during training, not at inference).
module colnn_dropout
  use colnn_kinds, only: wp
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  use colnn_random, only: dropout_mask
  use colnn_kinds, only: i8
  implicit none
  private

  public :: dropout_t

  type, extends(layer_t) :: dropout_t
    real(wp) :: rate = 0
    integer(i8) :: seed = 0        !< training masks: a pure function of (seed, call, column, feature)
    integer(i8) :: calls = 0
    real(wp), allocatable :: mask(:, :)
  contains
    procedure :: init => dropout_init
    procedure :: forward => dropout_forward
    procedure :: describe => dropout_describe
    procedure :: type_name => dropout_type_name
    procedure :: is_elementwise => dropout_is_elementwise
    procedure :: apply_inplace => dropout_apply_inplace
    procedure :: forward_train => dropout_forward_train
    procedure :: backward => dropout_backward
  end type dropout_t

contains

  function dropout_type_name(self) result(name)
    class(dropout_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'dropout'
  end function dropout_type_name

  subroutine dropout_init(self, spec, n_in, stat, errmsg)
    class(dropout_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('rate', self%rate, stat, errmsg); if (stat /= 0) return
    if (self%rate < 0 .or. self%rate >= 1) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': dropout rate must be in [0, 1)'
      return
    end if
    call spec%check_all_used(stat, errmsg)
  end subroutine dropout_init

  subroutine dropout_describe(self, spec)
    class(dropout_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('rate', self%rate)
  end subroutine dropout_describe

  pure logical function dropout_is_elementwise(self)
    class(dropout_t), intent(in) :: self
    dropout_is_elementwise = .true.
  end function dropout_is_elementwise

  subroutine dropout_apply_inplace(self, nc, a)
    class(dropout_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
  end subroutine dropout_apply_inplace

  subroutine dropout_forward(self, nc, x, y)
    class(dropout_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
  end subroutine dropout_forward

  subroutine dropout_forward_train(self, nc, x, y)
    class(dropout_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    if (allocated(self%mask)) then
      if (size(self%mask, 2) /= nc) deallocate (self%mask)
    end if
    if (.not. allocated(self%mask)) allocate (self%mask(self%n_in, nc))
    self%calls = self%calls + 1
    call dropout_mask(self%seed, self%calls, self%n_in, nc, self%rate, self%mask)
    y = x * self%mask
  end subroutine dropout_forward_train

  subroutine dropout_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(dropout_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    if (.not. allocated(self%mask)) then
      stat = COLNN_ERR_ARGUMENT
      errmsg = 'dropout backward: no forward_train before'
      dx = 0
      return
    end if
    dx = dy * self%mask
  end subroutine dropout_backward
end module colnn_dropout
